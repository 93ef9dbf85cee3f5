/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  The rtsub server's shared state: what the worker publishes about
 *	  itself (pid, state, bound port, counters) for SQL sessions to read.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_SHMEM_H
#define RTSUB_SHMEM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/latch.h"
#include "storage/spin.h"

/* upper bounds (ms) of the commit-to-send latency histogram's buckets */
#define RTSUB_LATENCY_BUCKETS_MS {0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000}
#define RTSUB_LATENCY_NBUCKETS 11

/* hex digits of RtsubShared.epoch */
#define RTSUB_EPOCH_LEN		16

typedef enum RtsubServerState
{
	RTSUB_SERVER_STOPPED = 0,	/* no worker running */
	RTSUB_SERVER_STARTING,		/* worker started, not serving yet */
	RTSUB_SERVER_RUNNING,		/* listening on port */
	RTSUB_SERVER_STOPPING,		/* worker is exiting */
	RTSUB_SERVER_DISABLED		/* rtsub.port = 0: no worker */
} RtsubServerState;

typedef struct RtsubShared
{
	slock_t		mutex;			/* protects the fields up to the counters */
	pid_t		pid;			/* worker's pid, 0 when none */
	RtsubServerState state;
	int			port;			/* TCP port bound, 0 when not listening */
	TimestampTz started_at;		/* when the worker started serving */
	int			bind_failures;	/* consecutive failed starts (log throttle) */
	Latch	   *worker_latch;	/* set by committing backends; NULL: none */

	/* counters since the postmaster started (survive worker restarts) */
	pg_atomic_uint64 http_requests;
	pg_atomic_uint64 connections_accepted;
	pg_atomic_uint64 connections_rejected;
	pg_atomic_uint64 bytes_sent;
	pg_atomic_uint64 changes_decoded;
	pg_atomic_uint64 stream_errors;
	pg_atomic_uint64 stream_read_upto;	/* WAL position decoded up to */
	pg_atomic_uint64 changes_evaluated; /* change x subscription evaluations */
	pg_atomic_uint64 changes_delivered; /* change messages queued for clients */
	pg_atomic_uint64 window_bytes;	/* gauge: memory of the resume window */
	pg_atomic_uint64 window_start;	/* LSN of the window's start */
	pg_atomic_uint64 slot_confirmed;	/* LSN the slot is confirmed up to */
	pg_atomic_uint64 snapshots_started;
	pg_atomic_uint64 resets_sent;

	/*
	 * commit -> written to the client's socket, for change messages: a
	 * histogram (cumulative counts per bucket of RTSUB_LATENCY_BUCKETS_MS,
	 * the last one +Inf) and the sum in microseconds
	 */
	pg_atomic_uint64 latency_bucket[RTSUB_LATENCY_NBUCKETS + 1];
	pg_atomic_uint64 latency_sum_us;

	/* WebSocket sessions (ws_server.c) */
	pg_atomic_uint64 ws_sessions_accepted;	/* upgrades accepted */
	pg_atomic_uint64 ws_sessions_refused;	/* upgrades refused (origin,
											 * token, path, subprotocol) */
	pg_atomic_uint64 ws_sessions_open;	/* gauge: open sessions */
	pg_atomic_uint64 ws_auth_failures;	/* token or role rejected */
	pg_atomic_uint64 messages_received; /* complete client messages */
	pg_atomic_uint64 messages_sent; /* messages handed to clients */
	pg_atomic_uint64 ws_slow_consumers; /* sessions closed with 4009 (or
										 * SSE streams ended for it) */

	/* Server-Sent Events streams (session.c) */
	pg_atomic_uint64 sse_sessions_accepted; /* streams opened */
	pg_atomic_uint64 sse_sessions_refused;	/* requests refused */
	pg_atomic_uint64 sse_sessions_open; /* gauge: open streams */

	/*
	 * the welcome's "epoch": random hex chosen when the server's slot is
	 * created, kept in the data directory (window.c) so that it survives
	 * restarts; new whenever the stream's continuity is lost
	 */
	char		epoch[RTSUB_EPOCH_LEN + 1];

	/* on-demand descriptions of the sessions (monitor.c), under mutex */
	uint64		dump_requested;
	uint64		dump_served;
	dsm_handle	dump_handle;
	ConditionVariable dump_cv;
} RtsubShared;

/* NULL unless rtsub is in shared_preload_libraries */
extern RtsubShared *rtsub_shared;

extern void rtsub_shmem_install_hooks(bool disabled);
extern const char *rtsub_server_state_name(RtsubServerState state);
extern void rtsub_shared_set_state(RtsubServerState state, int port);
extern void rtsub_shmem_install_commit_wakeup(void);
extern void rtsub_new_epoch(char *epoch);
extern void rtsub_observe_latency(TimestampTz commit_time, TimestampTz now);

#endif							/* RTSUB_SHMEM_H */
