/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Owns the rtsub server's background worker: its registration (and the
 *	  shared state's hooks) from _PG_init, its start, its wait loop and its
 *	  exit.  The network side is ws_server.c, the shared state shmem.c.
 *
 *	  Design of the wait loop.  The worker has exactly one wait point, a
 *	  WaitEventSet holding
 *	    - its latch (signals: SIGTERM via die(), SIGHUP reload),
 *	    - postmaster death (WL_EXIT_ON_PM_DEATH), and
 *	    - one epoll fd that holds every libwebsockets fd (the listen socket,
 *	      client connections, lws's internal pipe); see ws_server.c for why
 *	      that epoll fd is libuv's.
 *	  The timeout is lws's next timer (at most MAX_WAIT_MS).  Each iteration
 *	  resets a per-iteration memory context, handles interrupts (exits on
 *	  SIGTERM) and configuration reloads, then services lws without blocking.
 *	  Nothing else ever blocks, so an idle server sleeps in WaitEventSetWait
 *	  and SIGTERM is acted on at once.
 *
 *	  When the port cannot be bound (another server holds it) the worker
 *	  logs a WARNING and exits with status 1; the postmaster starts it again
 *	  after bgw_restart_time (RESTART_SECONDS), so it retries without a fast
 *	  crash loop.  Repeated failures are logged at most once a minute.
 *	  rtsub.port = 0 disables the server: no worker is registered.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/extension.h"
#include "utils/timestamp.h"

#include "audit.h"
#include "config.h"
#include "auth_jwt.h"
#include "evaluate.h"
#include "monitor.h"
#include "stream.h"
#include "shmem.h"
#include "window.h"
#include "worker.h"
#include "ws_server.h"

#define RESTART_SECONDS	5
#define STREAM_RETRY_MS	1000
#define STREAM_BATCH	10000
#define EXTENSION_CHECK_MS	1000

static bool stream_opened = false;
static TimestampTz stream_failed_at = 0;	/* the last stream error */
static TimestampTz extension_checked_at = 0;
static Oid	stream_extension = InvalidOid;	/* the extension the stream serves */
#define MAX_WAIT_MS		1000L
#define LOG_EVERY_NTH_FAILURE	(60 / RESTART_SECONDS)

/* register the server worker; only while preloading (shared_preload_libraries) */
void
rtsub_worker_init(void)
{
	BackgroundWorker worker;
	bool		disabled = (rtsub_port == 0);

	if (!process_shared_preload_libraries_in_progress)
		return;

	rtsub_shmem_install_hooks(disabled);
	if (!disabled)
		rtsub_shmem_install_commit_wakeup();
	if (disabled)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = RESTART_SECONDS;
	strlcpy(worker.bgw_library_name, "rtsub", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "rtsub_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "rtsub server", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "rtsub server", BGW_MAXLEN);
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

/* before_shmem_exit callback: stop serving and publish that */
static void
worker_exit(int code, Datum arg)
{
	rtsub_shared_set_state(RTSUB_SERVER_STOPPING, 0);
	if (stream_opened)
		rtsub_stream_close();
	rtsub_ws_stop();
	rtsub_shared_set_state(RTSUB_SERVER_STOPPED, 0);
}

/*
 * Every client is a socket: raise the soft limit on open files to the hard
 * one (Debian's default soft limit of 1024 would cap the server near 1,000
 * clients and starve PostgreSQL's own file access).
 */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		ereport(LOG,
				(errmsg("rtsub: could not raise the open files limit: %m")));
	if (rl.rlim_max < (rlim_t) rtsub_max_connections + 1024)
		ereport(WARNING,
				(errmsg("rtsub server can open at most %lu files, fewer than rtsub.max_connections (%d) needs",
						(unsigned long) rl.rlim_max, rtsub_max_connections),
				 errhint("Raise the hard limit on open files (LimitNOFILE, ulimit -Hn) of the PostgreSQL service.")));
}

/* start listening; on failure log (throttled) and exit to be restarted */
static void
start_serving(void)
{
	char	   *error = NULL;
	int			failures;
	bool		quiet;

	SpinLockAcquire(&rtsub_shared->mutex);
	failures = rtsub_shared->bind_failures;
	SpinLockRelease(&rtsub_shared->mutex);
	quiet = failures > 0 && (failures + 1) % LOG_EVERY_NTH_FAILURE != 0;

	if (rtsub_ws_start(rtsub_listen_address, rtsub_port, &error))
		return;

	SpinLockAcquire(&rtsub_shared->mutex);
	failures = ++rtsub_shared->bind_failures;
	SpinLockRelease(&rtsub_shared->mutex);

	ereport(quiet ? DEBUG1 : WARNING,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("rtsub server could not start: %s", error),
			 errdetail("Attempt %d; the server retries every %d seconds.",
					   failures, RESTART_SECONDS),
			 errhint("Free the port, or choose another one with rtsub.port (0 disables the server).")));
	proc_exit(1);
}

/*
 * The OID of the rtsub extension in the server's database (InvalidOid:
 * not installed).  Checked at most once a second; without it the server
 * keeps no slot (DROP EXTENSION must not leave one behind).
 */
static Oid
extension_present(void)
{
	static Oid	oid = InvalidOid;
	TimestampTz now = GetCurrentTimestamp();

	if (extension_checked_at != 0 &&
		!TimestampDifferenceExceeds(extension_checked_at, now, EXTENSION_CHECK_MS))
		return oid;
	extension_checked_at = now;
	StartTransactionCommand();
	oid = get_extension_oid("rtsub", true);
	CommitTransactionCommand();
	return oid;
}

/* the extension is gone: drop the slot, forget the window, reset clients */
static void
stream_retire(void)
{
	if (stream_opened)
	{
		rtsub_stream_close();
		stream_opened = false;
	}
	if (rtsub_window_is_open())
	{
		rtsub_window_close();
		rtsub_engine_reset_all("epoch_changed");
	}
	if (rtsub_stream_drop_slot(rtsub_slot_name))
		ereport(LOG,
				(errmsg("rtsub: the rtsub extension is not installed in database \"%s\": its slot is dropped",
						rtsub_database)));
}

/*
 * Decode what has been committed since the last poll, one bounded batch
 * (true if more WAL waits: the loop then does not sleep).  Each decoded
 * batch joins the resume window (window.c) and is evaluated for the live
 * subscriptions; the slot is confirmed up to the window's start.  An ERROR
 * closes the stream, which is opened again after STREAM_RETRY_MS, from the
 * slot's confirmed position: nothing handled is lost, nothing is skipped,
 * and what is decoded again is recognised as already in the window.
 */
static bool
poll_stream(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext volatile batch_cxt = NULL;
	volatile bool more = false;

	if (stream_failed_at != 0 &&
		!TimestampDifferenceExceeds(stream_failed_at, GetCurrentTimestamp(), STREAM_RETRY_MS))
		return false;

	PG_TRY();
	{
		List	   *changes;
		XLogRecPtr	upto;
		int			n;

		Oid			ext = extension_present();

		if (!OidIsValid(ext) || (OidIsValid(stream_extension) && ext != stream_extension))
		{
			/* gone, or dropped and created again: the old stream is over */
			stream_retire();
			stream_extension = InvalidOid;
			stream_failed_at = 0;
		}
		if (OidIsValid(ext))
		{
			stream_extension = ext;
			if (stream_failed_at != 0 || !stream_opened)
			{
				bool		created = rtsub_stream_ensure_slot(rtsub_slot_name);

				rtsub_stream_open(rtsub_slot_name);
				stream_opened = true;
				stream_failed_at = 0;
				if (created || !rtsub_window_is_open())
				{
					if (rtsub_window_is_open())
						rtsub_engine_reset_all("epoch_changed");
					rtsub_window_open(rtsub_slot_name, created, rtsub_stream_confirmed());
				}
			}
			/* one bounded batch per loop iteration: sockets are served in between */
			{
				RtsubSegment *seg;

				changes = NIL;
				batch_cxt = AllocSetContextCreate(TopMemoryContext, "rtsub window segment",
												  ALLOCSET_DEFAULT_SIZES);
				upto = rtsub_stream_poll(STREAM_BATCH, batch_cxt, &changes);
				n = list_length(changes);
				pg_atomic_fetch_add_u64(&rtsub_shared->changes_decoded, n);
				seg = rtsub_window_append(batch_cxt, changes);	/* takes batch_cxt */
				batch_cxt = NULL;
				rtsub_evaluate_segment(seg);
				rtsub_stream_confirm(rtsub_window_checkpoint(upto, GetCurrentTimestamp()));
				pg_atomic_write_u64(&rtsub_shared->stream_read_upto, upto);
				pg_atomic_write_u64(&rtsub_shared->slot_confirmed, rtsub_stream_confirmed());
				more = (upto < GetFlushRecPtr(NULL));
			}
		}
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		if (geterrcode() == ERRCODE_ADMIN_SHUTDOWN ||
			geterrcode() == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		if (batch_cxt != NULL)
			MemoryContextDelete(batch_cxt);
		rtsub_stream_close();
		stream_opened = false;
		stream_failed_at = GetCurrentTimestamp();
		pg_atomic_fetch_add_u64(&rtsub_shared->stream_errors, 1);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	return more;
}

/*
 * Open the stream now if it is not open (a client subscribes right after
 * the server started, or after CREATE EXTENSION): snapshots and resuming
 * need the window.
 */
void
rtsub_worker_open_stream_now(void)
{
	if (stream_opened)
		return;
	extension_checked_at = 0;
	stream_failed_at = 0;
	(void) poll_stream();
}

/*
 * Snapshots, catching up, the window's trimming: the engine's step, with
 * errors contained like the stream's.  True if it has more to do now.
 */
static bool
step_engine(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool more = false;

	PG_TRY();
	{
		more = rtsub_engine_step(rtsub_stream_read_upto(), GetCurrentTimestamp());
		pg_atomic_write_u64(&rtsub_shared->window_bytes, rtsub_window_bytes());
		pg_atomic_write_u64(&rtsub_shared->window_start, rtsub_window_start().lsn);
		rtsub_monitor_serve();
		rtsub_audit_flush();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		if (geterrcode() == ERRCODE_ADMIN_SHUTDOWN ||
			geterrcode() == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	return more;
}

/* the server worker: connect, listen, then serve until SIGTERM */
void
rtsub_worker_main(Datum main_arg)
{
	WaitEventSet *set;
	MemoryContext iteration_cxt;
	bool		busy = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (rtsub_shared == NULL)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub server is not loaded"),
				 errhint("Add rtsub to shared_preload_libraries and restart.")));

	rtsub_shared_set_state(RTSUB_SERVER_STARTING, 0);
	before_shmem_exit(worker_exit, (Datum) 0);

	BackgroundWorkerInitializeConnection(rtsub_database, NULL, 0);
	raise_fd_limit();

	start_serving();
	rtsub_shared_set_state(RTSUB_SERVER_RUNNING, rtsub_ws_port());
	ereport(DEBUG1,
			(errmsg_internal("rtsub server listening on port %d", rtsub_ws_port())));

	iteration_cxt = AllocSetContextCreate(TopMemoryContext,
										  "rtsub server iteration",
										  ALLOCSET_DEFAULT_SIZES);
	set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(set, WL_SOCKET_READABLE, rtsub_ws_wait_fd(), NULL, NULL);

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		int			i;

		MemoryContextReset(iteration_cxt);
		MemoryContextSwitchTo(iteration_cxt);

		nevents = WaitEventSetWait(set, busy ? 0 : rtsub_ws_timeout(rtsub_engine_wait_ms(MAX_WAIT_MS)),
								   events, lengthof(events), PG_WAIT_EXTENSION);
		for (i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
		}

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			rtsub_auth_reload();	/* a key file may change behind its path */
		}

		/* committed changes, the engine, then sockets and timers, without blocking */
		busy = poll_stream();
		busy |= step_engine();
		rtsub_ws_service();
	}
}
