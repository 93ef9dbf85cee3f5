/*-------------------------------------------------------------------------
 *
 * monitor.c
 *	  Owns the SQL view of the rtsub server's clients and counters:
 *	  rtsub._server_sessions() (behind the views rtsub.connections and
 *	  rtsub.active_subscriptions) and rtsub.stats().
 *
 *	  Sessions live in the server worker's memory, so a backend asks for a
 *	  description: it bumps dump_requested in the shared state and sets the
 *	  worker's latch; the worker, at its next iteration, writes a JSON
 *	  description of its sessions (session.c) into a dynamic shared memory
 *	  segment it pins, publishes the handle and wakes the backend through a
 *	  condition variable; the backend copies it and unpins the segment.  A
 *	  named LWLock lets one backend ask at a time.  Nothing is spent on the
 *	  worker's hot path: counters per session are plain fields.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "monitor.h"
#include "session.h"
#include "shmem.h"

#define DUMP_TIMEOUT_MS 5000

PG_FUNCTION_INFO_V1(rtsub_server_sessions);
PG_FUNCTION_INFO_V1(rtsub_stats);

/* the worker: answer a pending request for a description of the sessions */
void
rtsub_monitor_serve(void)
{
	uint64		requested;
	StringInfoData buf;
	dsm_segment *seg;

	if (rtsub_shared == NULL)
		return;
	SpinLockAcquire(&rtsub_shared->mutex);
	requested = rtsub_shared->dump_requested;
	SpinLockRelease(&rtsub_shared->mutex);
	if (requested == rtsub_shared->dump_served)
		return;

	initStringInfo(&buf);
	rtsub_sessions_describe(&buf);
	seg = dsm_create(buf.len + 1, 0);
	memcpy(dsm_segment_address(seg), buf.data, buf.len + 1);
	dsm_pin_segment(seg);		/* outlives our mapping; the reader unpins */
	SpinLockAcquire(&rtsub_shared->mutex);
	rtsub_shared->dump_handle = dsm_segment_handle(seg);
	rtsub_shared->dump_served = requested;
	SpinLockRelease(&rtsub_shared->mutex);
	dsm_detach(seg);
	pfree(buf.data);
	ConditionVariableBroadcast(&rtsub_shared->dump_cv);
}

/* error out unless the server is loaded and running */
static Latch *
running_worker_latch(void)
{
	Latch	   *latch;

	if (rtsub_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub server is not loaded"),
				 errhint("Add rtsub to shared_preload_libraries and restart.")));
	SpinLockAcquire(&rtsub_shared->mutex);
	latch = rtsub_shared->worker_latch;
	SpinLockRelease(&rtsub_shared->mutex);
	return latch;
}

/*
 * rtsub._server_sessions(): the server's sessions and their subscriptions
 * as a jsonb array; empty when the server is not running
 */
Datum
rtsub_server_sessions(PG_FUNCTION_ARGS)
{
	Latch	   *latch = running_worker_latch();
	LWLock	   *lock;
	uint64		mine;
	dsm_handle	handle = 0;
	bool		served = false;
	TimestampTz deadline;
	char	   *text = NULL;

	if (latch == NULL)
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum("[]")));

	lock = &(GetNamedLWLockTranche("rtsub monitor"))->lock;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	SpinLockAcquire(&rtsub_shared->mutex);
	mine = ++rtsub_shared->dump_requested;
	SpinLockRelease(&rtsub_shared->mutex);
	SetLatch(latch);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DUMP_TIMEOUT_MS);
	ConditionVariablePrepareToSleep(&rtsub_shared->dump_cv);
	for (;;)
	{
		long		remaining;

		SpinLockAcquire(&rtsub_shared->mutex);
		served = (rtsub_shared->dump_served == mine);
		handle = rtsub_shared->dump_handle;
		SpinLockRelease(&rtsub_shared->mutex);
		if (served)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		ConditionVariableTimedSleep(&rtsub_shared->dump_cv, Min(remaining, 100L),
									PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	if (served)
	{
		dsm_segment *seg = dsm_attach(handle);

		if (seg != NULL)
		{
			text = pstrdup(dsm_segment_address(seg));
			dsm_detach(seg);
		}
		dsm_unpin_segment(handle);
	}
	LWLockRelease(lock);
	if (text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub server did not describe its sessions within %d ms", DUMP_TIMEOUT_MS),
				 errhint("Check that the rtsub server is running: SELECT * FROM rtsub.server_status().")));
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/*
 * rtsub.stats(): what the server decoded, evaluated and delivered, and how
 * far behind it is
 */
Datum
rtsub_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[12];
	bool		nulls[12];
	XLogRecPtr	read_upto;
	XLogRecPtr	flush = GetFlushRecPtr(NULL);

	(void) running_worker_latch();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));
	read_upto = pg_atomic_read_u64(&rtsub_shared->stream_read_upto);
	values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->changes_decoded));
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->changes_evaluated));
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->changes_delivered));
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->messages_sent));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->bytes_sent));
	values[5] = Int64GetDatum(read_upto == 0 ? 0 : (int64) (flush > read_upto ? flush - read_upto : 0));
	nulls[5] = (read_upto == 0);
	values[6] = LSNGetDatum(read_upto);
	nulls[6] = (read_upto == 0);
	values[7] = LSNGetDatum(pg_atomic_read_u64(&rtsub_shared->window_start));
	nulls[7] = (read_upto == 0);
	values[8] = LSNGetDatum(pg_atomic_read_u64(&rtsub_shared->slot_confirmed));
	nulls[8] = (read_upto == 0);
	values[9] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->window_bytes));
	values[10] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->snapshots_started));
	values[11] = Int64GetDatum((int64) pg_atomic_read_u64(&rtsub_shared->resets_sent));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
