/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Owns the rtsub server's shared state (RtsubShared): reserving and
 *	  initializing it through shmem_request_hook and shmem_startup_hook, the
 *	  worker's updates of its state, and the SQL functions that read it,
 *	  rtsub.server_status() and rtsub.wait_until_running().
 *
 *	  The fields describing the worker are protected by a spinlock; the
 *	  counters are atomics, bumped by the worker without locking.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "shmem.h"

RtsubShared *rtsub_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool server_disabled = false;

PG_FUNCTION_INFO_V1(rtsub_server_status);
PG_FUNCTION_INFO_V1(rtsub_wait_until_running);

/* shmem_request_hook: reserve room for RtsubShared */
static void
rtsub_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(RtsubShared)));
	RequestNamedLWLockTranche("rtsub monitor", 1);
}

/*
 * a fresh epoch: RTSUB_EPOCH_LEN random hex digits (the time and pid when
 * no strong random source is available)
 */
void
rtsub_new_epoch(char *epoch)
{
	static const char hex[] = "0123456789abcdef";
	uint8		bytes[RTSUB_EPOCH_LEN / 2];
	int			i;

	if (!pg_strong_random(bytes, sizeof(bytes)))
	{
		uint64		t = (uint64) GetCurrentTimestamp() ^ ((uint64) MyProcPid << 40);

		for (i = 0; i < (int) sizeof(bytes); i++)
			bytes[i] = (uint8) (t >> (8 * (i % 8)));
	}
	for (i = 0; i < (int) sizeof(bytes); i++)
	{
		epoch[2 * i] = hex[bytes[i] >> 4];
		epoch[2 * i + 1] = hex[bytes[i] & 0xf];
	}
	epoch[RTSUB_EPOCH_LEN] = '\0';
}

/* shmem_startup_hook: create (or attach to) RtsubShared */
static void
rtsub_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	rtsub_shared = ShmemInitStruct("rtsub server", sizeof(RtsubShared), &found);
	if (!found)
	{
		memset(rtsub_shared, 0, sizeof(RtsubShared));
		SpinLockInit(&rtsub_shared->mutex);
		rtsub_shared->state = server_disabled ? RTSUB_SERVER_DISABLED : RTSUB_SERVER_STOPPED;
		pg_atomic_init_u64(&rtsub_shared->http_requests, 0);
		pg_atomic_init_u64(&rtsub_shared->connections_accepted, 0);
		pg_atomic_init_u64(&rtsub_shared->connections_rejected, 0);
		pg_atomic_init_u64(&rtsub_shared->bytes_sent, 0);
		pg_atomic_init_u64(&rtsub_shared->changes_decoded, 0);
		pg_atomic_init_u64(&rtsub_shared->stream_errors, 0);
		pg_atomic_init_u64(&rtsub_shared->stream_read_upto, 0);
		pg_atomic_init_u64(&rtsub_shared->changes_evaluated, 0);
		pg_atomic_init_u64(&rtsub_shared->changes_delivered, 0);
		pg_atomic_init_u64(&rtsub_shared->window_bytes, 0);
		pg_atomic_init_u64(&rtsub_shared->window_start, 0);
		pg_atomic_init_u64(&rtsub_shared->slot_confirmed, 0);
		pg_atomic_init_u64(&rtsub_shared->snapshots_started, 0);
		pg_atomic_init_u64(&rtsub_shared->resets_sent, 0);
		ConditionVariableInit(&rtsub_shared->dump_cv);
		for (int i = 0; i <= RTSUB_LATENCY_NBUCKETS; i++)
			pg_atomic_init_u64(&rtsub_shared->latency_bucket[i], 0);
		pg_atomic_init_u64(&rtsub_shared->latency_sum_us, 0);
		pg_atomic_init_u64(&rtsub_shared->ws_sessions_accepted, 0);
		pg_atomic_init_u64(&rtsub_shared->ws_sessions_refused, 0);
		pg_atomic_init_u64(&rtsub_shared->ws_sessions_open, 0);
		pg_atomic_init_u64(&rtsub_shared->ws_auth_failures, 0);
		pg_atomic_init_u64(&rtsub_shared->messages_received, 0);
		pg_atomic_init_u64(&rtsub_shared->messages_sent, 0);
		pg_atomic_init_u64(&rtsub_shared->ws_slow_consumers, 0);
		pg_atomic_init_u64(&rtsub_shared->sse_sessions_accepted, 0);
		pg_atomic_init_u64(&rtsub_shared->sse_sessions_refused, 0);
		pg_atomic_init_u64(&rtsub_shared->sse_sessions_open, 0);
		rtsub_new_epoch(rtsub_shared->epoch);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* install the shared memory hooks; called from _PG_init in the postmaster */
void
rtsub_shmem_install_hooks(bool disabled)
{
	server_disabled = disabled;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = rtsub_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = rtsub_shmem_startup;
}

/* the SQL-visible name of a state */
const char *
rtsub_server_state_name(RtsubServerState state)
{
	switch (state)
	{
		case RTSUB_SERVER_STOPPED:
			return "stopped";
		case RTSUB_SERVER_STARTING:
			return "starting";
		case RTSUB_SERVER_RUNNING:
			return "running";
		case RTSUB_SERVER_STOPPING:
			return "stopping";
		case RTSUB_SERVER_DISABLED:
			return "disabled";
	}
	return "unknown";
}

/*
 * Called by the worker: publish its state and bound port (0: none).  The
 * worker's pid is set while it runs and cleared once it has stopped;
 * started_at is set when it starts running.
 */
void
rtsub_shared_set_state(RtsubServerState state, int port)
{
	if (rtsub_shared == NULL)
		return;
	SpinLockAcquire(&rtsub_shared->mutex);
	rtsub_shared->state = state;
	rtsub_shared->port = port;
	rtsub_shared->pid = (state == RTSUB_SERVER_STOPPED) ? 0 : MyProcPid;
	rtsub_shared->worker_latch = (state == RTSUB_SERVER_RUNNING) ? MyLatch : NULL;
	if (state == RTSUB_SERVER_RUNNING)
	{
		rtsub_shared->started_at = GetCurrentTimestamp();
		rtsub_shared->bind_failures = 0;
	}
	else if (state != RTSUB_SERVER_STOPPING)
		rtsub_shared->started_at = 0;
	SpinLockRelease(&rtsub_shared->mutex);
}

/*
 * Commit wake-up: a transaction that wrote WAL sets the server's latch once
 * its commit record is flushed (XACT_EVENT_COMMIT comes after that), so the
 * server decodes at once instead of polling.
 */
static void
commit_wakeup(XactEvent event, void *arg)
{
	Latch	   *latch;

	if (event != XACT_EVENT_COMMIT || rtsub_shared == NULL ||
		!TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	latch = rtsub_shared->worker_latch;	/* a pointer read is atomic */
	if (latch != NULL)
		SetLatch(latch);
}

/* install the commit wake-up in every backend (called from _PG_init) */
void
rtsub_shmem_install_commit_wakeup(void)
{
	RegisterXactCallback(commit_wakeup, NULL);
}

/* error out unless the shared state exists (rtsub preloaded) */
static void
require_shared_state(void)
{
	if (rtsub_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub server is not loaded"),
				 errhint("Add rtsub to shared_preload_libraries and restart.")));
}

/*
 * rtsub.server_status(): one row describing the server worker.
 * pid, port and started_at are NULL when no worker is running.
 */
Datum
rtsub_server_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[8];
	bool		nulls[8];
	pid_t		pid;
	RtsubServerState state;
	int			port;
	TimestampTz started_at;

	require_shared_state();
	InitMaterializedSRF(fcinfo, 0);

	SpinLockAcquire(&rtsub_shared->mutex);
	pid = rtsub_shared->pid;
	state = rtsub_shared->state;
	port = rtsub_shared->port;
	started_at = rtsub_shared->started_at;
	SpinLockRelease(&rtsub_shared->mutex);

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum((int32) pid);
	nulls[0] = (pid == 0);
	values[1] = CStringGetTextDatum(rtsub_server_state_name(state));
	values[2] = Int32GetDatum(port);
	nulls[2] = (port == 0);
	values[3] = TimestampTzGetDatum(started_at);
	nulls[3] = (started_at == 0);
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->http_requests));
	values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->connections_accepted));
	values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->connections_rejected));
	values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->bytes_sent));

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * rtsub.wait_until_running(timeout_ms int): true as soon as the server is
 * running and listening, false after timeout_ms (or at once when the
 * server is disabled).
 */
Datum
rtsub_wait_until_running(PG_FUNCTION_ARGS)
{
	int32		timeout_ms = PG_ARGISNULL(0) ? 10000 : PG_GETARG_INT32(0);
	TimestampTz deadline;

	require_shared_state();
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		RtsubServerState state;
		int			port;
		long		remaining;

		SpinLockAcquire(&rtsub_shared->mutex);
		state = rtsub_shared->state;
		port = rtsub_shared->port;
		SpinLockRelease(&rtsub_shared->mutex);

		if (state == RTSUB_SERVER_RUNNING && port != 0)
			PG_RETURN_BOOL(true);
		if (state == RTSUB_SERVER_DISABLED)
			PG_RETURN_BOOL(false);

		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			PG_RETURN_BOOL(false);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(remaining, 50L), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* count one change message written: commit_time to now, in the histogram */
void
rtsub_observe_latency(TimestampTz commit_time, TimestampTz now)
{
	static const double bounds[] = RTSUB_LATENCY_BUCKETS_MS;
	int64		us = now - commit_time;
	int			i;

	if (rtsub_shared == NULL || commit_time == 0)
		return;
	if (us < 0)
		us = 0;
	for (i = 0; i < RTSUB_LATENCY_NBUCKETS; i++)
		if (us <= bounds[i] * 1000)
			break;
	pg_atomic_fetch_add_u64(&rtsub_shared->latency_bucket[i], 1);
	pg_atomic_fetch_add_u64(&rtsub_shared->latency_sum_us, (uint64) us);
}
