/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Owns the processes that read subscriptions' initial snapshots: starting
 *	  them (dynamic background workers "rtsub snapshot"), the shared memory
 *	  queue each one streams its chunks through, and the server worker's
 *	  side of those queues.
 *
 * Design notes
 *
 * A snapshot must be read in one transaction, with one MVCC snapshot, for
 * as long as the client takes to receive it; the server worker cannot hold
 * a transaction open that long (it runs one short transaction after
 * another) and must not stall its other clients.  So each snapshot is read
 * by a process of its own: the server worker puts the request into a
 * dynamic shared memory segment, starts an "rtsub snapshot" worker and
 * reads the worker's shm_mq.  The worker takes its snapshot, sends its
 * horizon (xmin, xmax, running xids, WAL insert position) first, then
 * scans the table evaluating filter, policies and native RLS exactly as
 * the server evaluates changes (evaluate.c compiles both), and sends
 * complete `snapshot` messages, chunk by chunk.
 *
 * Flow control is the queue: the server worker takes a chunk only while
 * the client's send queue is short, so a slow client stops its snapshot
 * worker (which waits on its latch in shm_mq_send) instead of filling the
 * server's memory.  shm_mq sets the server worker's latch when a chunk
 * arrives, so waiting for chunks is part of the server's one wait point.
 * At most rtsub.max_snapshot_workers run at once; further requests wait in
 * order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "config.h"
#include "shmem.h"
#include "snapshot.h"

#define SNAPSHOT_MAGIC		0x72747331
#define SNAPSHOT_MQ_SIZE	(1024 * 1024)
#define KEY_REQUEST			1
#define KEY_QUEUE			2
#define NSTRINGS			5
#define FORWARD_BYTES_PER_POLL	(2 * 1024 * 1024)

/* the request as laid out in shared memory */
typedef struct SharedRequest
{
	RtsubFormat format;
	int			chunk_rows;
	int			chunk_bytes;
	bool		include_metadata;
	bool		params_null;
	Size		len[NSTRINGS];	/* id, subscription, params, role, claims */
	char		strings[FLEXIBLE_ARRAY_MEMBER];
} SharedRequest;

struct RtsubSnapshotReader
{
	dlist_node	node;			/* in waiting or running */
	RtsubSubscription *sub;
	SharedRequest *request;		/* malloc'd copy until started */
	Size		request_size;
	dsm_segment *seg;
	shm_mq_handle *mqh;
	BackgroundWorkerHandle *handle;
	bool		running;
};

static dlist_head waiting = DLIST_STATIC_INIT(waiting);
static dlist_head running = DLIST_STATIC_INIT(running);
static int	nrunning = 0;

PGDLLEXPORT void rtsub_snapshot_main(Datum main_arg);

/* ----------------------------------------------------------------
 * The server worker's side
 * ----------------------------------------------------------------
 */

/* queue a snapshot request for sub; it starts when a worker is free */
RtsubSnapshotReader *
rtsub_snapshot_request(RtsubSubscription *sub, const RtsubSnapshotRequest *req)
{
	const char *strings[NSTRINGS] = {req->id, req->subscription,
		req->params_json ? req->params_json : "", req->role, req->claims_json};
	Size		total = offsetof(SharedRequest, strings);
	RtsubSnapshotReader *r;
	char	   *p;
	int			i;

	for (i = 0; i < NSTRINGS; i++)
		total += strlen(strings[i]) + 1;
	r = MemoryContextAllocZero(TopMemoryContext, sizeof(RtsubSnapshotReader));
	r->sub = sub;
	r->request_size = total;
	r->request = MemoryContextAllocZero(TopMemoryContext, total);
	r->request->format = req->format;
	r->request->chunk_rows = req->chunk_rows;
	r->request->chunk_bytes = req->chunk_bytes;
	r->request->include_metadata = req->include_metadata;
	r->request->params_null = (req->params_json == NULL);
	p = r->request->strings;
	for (i = 0; i < NSTRINGS; i++)
	{
		r->request->len[i] = strlen(strings[i]);
		memcpy(p, strings[i], r->request->len[i] + 1);
		p += r->request->len[i] + 1;
	}
	dlist_push_tail(&waiting, &r->node);
	return r;
}

/* start a waiting reader's worker; false if no worker slot is free */
static bool start_reader_in_context(RtsubSnapshotReader *r);

static bool
start_reader(RtsubSnapshotReader *r)
{
	/*
	 * the handles below (the worker's, the queue's) live as long as the
	 * reader, across iterations of the server's loop
	 */
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	bool		ok = start_reader_in_context(r);

	MemoryContextSwitchTo(oldcxt);
	return ok;
}

/* start_reader's work, in TopMemoryContext */
static bool
start_reader_in_context(RtsubSnapshotReader *r)
{
	Size		size;
	shm_toc_estimator e;
	shm_toc    *toc;
	SharedRequest *shared;
	shm_mq	   *mq;
	BackgroundWorker worker;
	dsm_segment *seg;

	shm_toc_initialize_estimator(&e);
	shm_toc_estimate_chunk(&e, r->request_size);
	shm_toc_estimate_chunk(&e, SNAPSHOT_MQ_SIZE);
	shm_toc_estimate_keys(&e, 2);
	size = shm_toc_estimate(&e);

	seg = dsm_create(size, DSM_CREATE_NULL_IF_MAXSEGMENTS);
	if (seg == NULL)
		return false;
	dsm_pin_mapping(seg);
	toc = shm_toc_create(SNAPSHOT_MAGIC, dsm_segment_address(seg), size);
	shared = shm_toc_allocate(toc, r->request_size);
	memcpy(shared, r->request, r->request_size);
	shm_toc_insert(toc, KEY_REQUEST, shared);
	mq = shm_mq_create(shm_toc_allocate(toc, SNAPSHOT_MQ_SIZE), SNAPSHOT_MQ_SIZE);
	shm_toc_insert(toc, KEY_QUEUE, mq);
	shm_mq_set_receiver(mq, MyProc);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "rtsub", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "rtsub_snapshot_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "rtsub snapshot", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "rtsub snapshot", BGW_MAXLEN);
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &r->handle))
	{
		dsm_detach(seg);
		return false;
	}
	r->seg = seg;
	r->mqh = shm_mq_attach(mq, seg, r->handle);
	r->running = true;
	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->snapshots_started, 1);
	pfree(r->request);
	r->request = NULL;
	return true;
}

/* stop a reader (done, failed, or its subscription closed) and free it */
void
rtsub_snapshot_stop(RtsubSnapshotReader *r)
{
	if (r == NULL)
		return;
	dlist_delete(&r->node);
	if (r->running)
	{
		nrunning--;
		if (r->mqh)
			shm_mq_detach(r->mqh);
		if (r->handle)
		{
			TerminateBackgroundWorker(r->handle);
			pfree(r->handle);
		}
		if (r->seg)
			dsm_detach(r->seg);
	}
	if (r->request)
		pfree(r->request);
	pfree(r);
}

/* hand one message of a reader to the engine; false when the reader ended */
static bool
dispatch(RtsubSnapshotReader *r, const char *data, Size len)
{
	RtsubSubscription *sub = r->sub;

	if (len < 1)
		return true;
	switch (data[0])
	{
		case 'S':
			rtsub_snapshot_on_horizon(sub, (const RtsubSnapshotHorizon *) (data + 1),
									  len - 1);
			return true;
		case 'C':
			rtsub_snapshot_on_chunk(sub, data + 1, len - 1);
			return true;
		case 'D':
			rtsub_snapshot_on_done(sub);	/* stops r */
			return false;
		case 'E':
			{
				char	   *copy = pnstrdup(data + 1, len - 1);
				const char *message = copy + strlen(copy) + 1;

				if (message > copy + (len - 1))
					message = "";
				rtsub_snapshot_on_failed(sub, copy, message);	/* stops r */
				return false;
			}
		default:
			rtsub_snapshot_on_failed(sub, "internal", "unexpected message from a snapshot worker");
			return false;
	}
}

/*
 * Start waiting readers while workers are free, and forward what running
 * ones have sent, as far as their clients take it.  True if a reader has
 * more to forward right now (call again without waiting).
 */
bool
rtsub_snapshots_poll(void)
{
	dlist_mutable_iter it;
	bool		more = false;

	dlist_foreach_modify(it, &waiting)
	{
		RtsubSnapshotReader *r = dlist_container(RtsubSnapshotReader, node, it.cur);

		if (nrunning >= rtsub_max_snapshot_workers)
			break;
		if (!start_reader(r))
		{
			if (nrunning == 0)
				rtsub_snapshot_on_failed(r->sub, "snapshot_failed",
										 "no background worker slot is free for a snapshot (max_worker_processes)");
			break;
		}
		dlist_delete(&r->node);
		dlist_push_tail(&running, &r->node);
		nrunning++;
	}

	dlist_foreach_modify(it, &running)
	{
		RtsubSnapshotReader *r = dlist_container(RtsubSnapshotReader, node, it.cur);
		Size		forwarded = 0;
		int			n;

		/* a bounded share per loop iteration: other clients are not stalled */
		for (n = 0; n < 64 && forwarded < FORWARD_BYTES_PER_POLL; n++)
		{
			Size		len;
			void	   *data;
			shm_mq_result res;

			if (!rtsub_snapshot_may_send(r->sub))
				break;
			res = shm_mq_receive(r->mqh, &len, &data, true);
			if (res == SHM_MQ_WOULD_BLOCK)
				break;
			if (res == SHM_MQ_DETACHED)
			{
				rtsub_snapshot_on_failed(r->sub, "snapshot_failed",
										 "the snapshot worker exited before the snapshot was complete");
				break;
			}
			forwarded += len;
			if (!dispatch(r, data, len))
				break;
			if (n == 63 || forwarded >= FORWARD_BYTES_PER_POLL)
				more = true;
		}
	}
	return more;
}

/* ----------------------------------------------------------------
 * The snapshot worker
 * ----------------------------------------------------------------
 */

/* send one message to the server worker; exit when it is gone */
static void
emit(char kind, const char *data, size_t len, void *arg)
{
	shm_mq_handle *mqh = arg;
	shm_mq_iovec iov[2];
	shm_mq_result res;

	iov[0].data = &kind;
	iov[0].len = 1;
	iov[1].data = data;
	iov[1].len = len;
	res = shm_mq_sendv(mqh, iov, len > 0 ? 2 : 1, false, true);
	if (res != SHM_MQ_SUCCESS)
		proc_exit(0);			/* the client or the server went away */
}

/* the snapshot worker: read one snapshot and stream it to the server */
void
rtsub_snapshot_main(Datum main_arg)
{
	dsm_segment *seg;
	shm_toc    *toc;
	SharedRequest *shared;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	RtsubSnapshotRequest req;
	const char *strings[NSTRINGS];
	const char *p;
	int			i;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	CurrentResourceOwner = ResourceOwnerCreate(NULL, "rtsub snapshot");
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		proc_exit(0);			/* the server worker already gave up */
	toc = shm_toc_attach(SNAPSHOT_MAGIC, dsm_segment_address(seg));
	if (toc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub snapshot worker got a bad shared memory segment")));
	shared = shm_toc_lookup(toc, KEY_REQUEST, false);
	mq = shm_toc_lookup(toc, KEY_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);

	p = shared->strings;
	for (i = 0; i < NSTRINGS; i++)
	{
		strings[i] = p;
		p += shared->len[i] + 1;
	}
	req.format = shared->format;
	req.chunk_rows = shared->chunk_rows;
	req.chunk_bytes = shared->chunk_bytes;
	req.include_metadata = shared->include_metadata;
	req.id = strings[0];
	req.subscription = strings[1];
	req.params_json = shared->params_null ? NULL : strings[2];
	req.role = strings[3];
	req.claims_json = strings[4];

	BackgroundWorkerInitializeConnection(rtsub_database, NULL, 0);
	rtsub_snapshot_scan(&req, emit, mqh);
	shm_mq_detach(mqh);
	dsm_detach(seg);
	proc_exit(0);
}
