/*-------------------------------------------------------------------------
 *
 * stream.c
 *	  The rtsub server's in-process consumer of its logical slot: creating
 *	  the slot, decoding what WAL has been flushed with the rtsub output
 *	  plugin in sink mode, and confirming what has been handled.
 *
 * Design notes
 *
 * The server does what a walsender does, in its own process: it acquires
 * its slot, keeps one decoding context open, and on each poll reads WAL up
 * to the flush position, feeding every record to LogicalDecodingProcessRecord.
 * The plugin (decoder.c) runs in sink mode: instead of encoding a change it
 * hands the tuples to stream_sink(), which copies them into the caller's
 * batch context.  Filters and permissions are evaluated by the caller after
 * the poll, outside the decoding callbacks, where user tables may be read.
 *
 * Tuple descriptors come from the plugin's relation cache, which may be
 * rebuilt in the middle of a batch (ALTER TABLE).  The sink copies each
 * descriptor once per (relation, version) and batch.
 *
 * Any ERROR while decoding leaves the context unusable: the caller catches
 * it, calls rtsub_stream_close() and opens the stream again; decoding then
 * restarts from the slot's confirmed position.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "rtsub.h"
#include "stream.h"

static LogicalDecodingContext *stream_ctx = NULL;

/*
 * WAL read per poll at most: WAL of tables nobody subscribes to (a bulk
 * load) yields no changes, and must not keep the server from its clients
 */
#define MAX_WAL_PER_POLL (8 * 1024 * 1024)

/* batch state while polling */
typedef struct DescCopy
{
	Oid			relid;
	uint64		version;
	TupleDesc	desc;
} DescCopy;

static MemoryContext batch_cxt = NULL;
static List *batch_changes = NIL;
static List *batch_descs = NIL;

/* no-op writer callbacks: in sink mode the plugin writes nothing */
static void
stream_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
					 TransactionId xid, bool last_write)
{
}

/* see stream_prepare_write */
static void
stream_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
			 TransactionId xid, bool last_write)
{
}

/* return this batch's copy of a relation's descriptor */
static TupleDesc
batch_desc(Oid relid, uint64 version, TupleDesc desc)
{
	ListCell   *lc;
	DescCopy   *dc;

	foreach(lc, batch_descs)
	{
		dc = lfirst(lc);
		if (dc->relid == relid && dc->version == version)
			return dc->desc;
	}
	dc = palloc(sizeof(DescCopy));
	dc->relid = relid;
	dc->version = version;
	dc->desc = CreateTupleDescCopy(desc);
	batch_descs = lappend(batch_descs, dc);
	return dc->desc;
}

/* the plugin's sink: copy a change into the batch */
static void
stream_sink(void *arg, const RtsubSinkChange *c)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(batch_cxt);
	RtsubChange *rc = palloc0(sizeof(RtsubChange));

	rc->commit_lsn = c->commit_lsn;
	rc->pos = c->pos;
	rc->xid = c->xid;
	rc->commit_time = c->commit_time;
	rc->op = c->op;
	rc->relid = c->relid;
	if (c->desc != NULL)
	{
		rc->schema = pstrdup(c->schema);
		rc->table = pstrdup(c->table);
		rc->desc = batch_desc(c->relid, c->desc_version, c->desc);
	}
	if (c->newtup)
		rc->newtup = heap_copytuple(c->newtup);
	if (c->oldtup)
		rc->oldtup = heap_copytuple(c->oldtup);
	rc->old_is_full = c->old_is_full;
	rc->truncate_cascade = c->truncate_cascade;
	rc->truncate_restart = c->truncate_restart;
	if (c->op == 'M')
	{
		rc->prefix = pstrdup(c->prefix);
		rc->content = palloc(c->content_size + 1);
		memcpy(rc->content, c->content, c->content_size);
		rc->content[c->content_size] = '\0';
		rc->content_size = c->content_size;
	}
	batch_changes = lappend(batch_changes, rc);
	MemoryContextSwitchTo(oldcxt);
}

/* does the slot exist? */
static bool
slot_exists(const char *slot_name)
{
	bool		exists;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	exists = SearchNamedReplicationSlot(slot_name, false) != NULL;
	LWLockRelease(ReplicationSlotControlLock);
	return exists;
}

/*
 * create the server's slot with the rtsub plugin if it does not exist;
 * true if it was created
 */
bool
rtsub_stream_ensure_slot(const char *slot_name)
{
	if (slot_exists(slot_name))
		return false;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(slot_name)};

		if (SPI_execute_with_args("SELECT pg_catalog.pg_create_logical_replication_slot($1, 'rtsub')",
								  1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not create replication slot \"%s\"", slot_name);
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	ereport(LOG,
			(errmsg("rtsub: created logical replication slot \"%s\"", slot_name)));
	return true;
}

/* drop the server's slot (the stream must be closed); false if none */
bool
rtsub_stream_drop_slot(const char *slot_name)
{
	if (!slot_exists(slot_name))
		return false;
	ReplicationSlotDrop(slot_name, true);
	ereport(LOG,
			(errmsg("rtsub: dropped logical replication slot \"%s\"", slot_name)));
	return true;
}

/* the slot's confirmed position (the stream must be open) */
XLogRecPtr
rtsub_stream_confirmed(void)
{
	Assert(MyReplicationSlot != NULL);
	return MyReplicationSlot->data.confirmed_flush;
}

/* acquire the slot and open the decoding context */
void
rtsub_stream_open(const char *slot_name)
{
	MemoryContext oldcxt;

	if (stream_ctx != NULL)
		return;
	ReplicationSlotAcquire(slot_name, true);
	if (!SlotIsLogical(MyReplicationSlot) ||
		strcmp(NameStr(MyReplicationSlot->data.plugin), "rtsub") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replication slot \"%s\" does not use the rtsub plugin", slot_name),
				 errhint("Drop it, or set rtsub.slot_name to another name.")));

	rtsub_sink = stream_sink;
	rtsub_sink_arg = NULL;
	/* the decoding context outlives the caller's (per-iteration) context */
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	stream_ctx = CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
									   XL_ROUTINE(.page_read = read_local_xlog_page,
												  .segment_open = wal_segment_open,
												  .segment_close = wal_segment_close),
									   stream_prepare_write, stream_write, NULL);
	MemoryContextSwitchTo(oldcxt);
	XLogBeginRead(stream_ctx->reader, MyReplicationSlot->data.restart_lsn);
}

/*
 * Decode flushed WAL until caught up, max_changes changes are collected or
 * MAX_WAL_PER_POLL bytes are read.
 * The changes, copied into cxt, are appended to *changes (RtsubChange *).
 * Returns the position up to which WAL has been read.
 */
XLogRecPtr
rtsub_stream_poll(int max_changes, MemoryContext cxt, List **changes)
{
	XLogRecPtr	end_of_wal = GetFlushRecPtr(NULL);
	XLogRecPtr	start;
	MemoryContext oldcxt;

	Assert(stream_ctx != NULL);
	batch_cxt = cxt;
	batch_changes = *changes;
	batch_descs = NIL;

	/*
	 * The WAL reader and decoding allocate some long-lived things (the record
	 * buffer for records that span pages, oversized decoded records) in
	 * CurrentMemoryContext: decode in the decoding context's own.
	 */
	oldcxt = MemoryContextSwitchTo(stream_ctx->context);
	start = stream_ctx->reader->EndRecPtr;
	while (stream_ctx->reader->EndRecPtr < end_of_wal &&
		   list_length(batch_changes) < max_changes &&
		   stream_ctx->reader->EndRecPtr - start < MAX_WAL_PER_POLL)
	{
		XLogRecord *record;
		char	   *errm = NULL;

		record = XLogReadRecord(stream_ctx->reader, &errm);
		if (errm)
			elog(ERROR, "could not read WAL: %s", errm);
		if (record != NULL)
			LogicalDecodingProcessRecord(stream_ctx, stream_ctx->reader);
		CHECK_FOR_INTERRUPTS();
	}

	MemoryContextSwitchTo(oldcxt);
	*changes = batch_changes;
	batch_changes = NIL;
	batch_descs = NIL;
	batch_cxt = NULL;
	return stream_ctx->reader->EndRecPtr;
}

/* the position decoding has read up to (InvalidXLogRecPtr if closed) */
XLogRecPtr
rtsub_stream_read_upto(void)
{
	return stream_ctx ? stream_ctx->reader->EndRecPtr : InvalidXLogRecPtr;
}

/* confirm that everything before lsn has been handled */
void
rtsub_stream_confirm(XLogRecPtr lsn)
{
	if (stream_ctx == NULL || lsn == InvalidXLogRecPtr ||
		lsn <= MyReplicationSlot->data.confirmed_flush)
		return;
	LogicalConfirmReceivedLocation(lsn);
	ReplicationSlotMarkDirty();
}

/* free the decoding context and release the slot; safe after an ERROR */
void
rtsub_stream_close(void)
{
	if (stream_ctx != NULL)
	{
		LogicalDecodingContext *ctx = stream_ctx;

		stream_ctx = NULL;
		FreeDecodingContext(ctx);
	}
	rtsub_sink = NULL;
	rtsub_sink_arg = NULL;
	batch_changes = NIL;
	batch_descs = NIL;
	batch_cxt = NULL;
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
}
