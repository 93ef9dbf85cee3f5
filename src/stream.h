/*-------------------------------------------------------------------------
 *
 * stream.h
 *	  The rtsub server's in-process consumer of its logical slot.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_STREAM_H
#define RTSUB_STREAM_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

/* One decoded change, copied into the batch context */
typedef struct RtsubChange
{
	XLogRecPtr	commit_lsn;
	uint32		pos;
	TransactionId xid;
	TimestampTz commit_time;
	char		op;				/* 'I', 'U', 'D', 'T' or 'M' */
	Oid			relid;			/* reported relation */
	char	   *schema;
	char	   *table;
	TupleDesc	desc;			/* shared by the batch's changes of relid */
	HeapTuple	newtup;
	HeapTuple	oldtup;
	bool		old_is_full;
	bool		truncate_cascade;
	bool		truncate_restart;
	char	   *prefix;
	char	   *content;
	Size		content_size;
} RtsubChange;

extern bool rtsub_stream_ensure_slot(const char *slot_name);
extern bool rtsub_stream_drop_slot(const char *slot_name);
extern XLogRecPtr rtsub_stream_confirmed(void);
extern void rtsub_stream_open(const char *slot_name);
extern XLogRecPtr rtsub_stream_poll(int max_changes, MemoryContext cxt,
									List **changes);
extern XLogRecPtr rtsub_stream_read_upto(void);
extern void rtsub_stream_confirm(XLogRecPtr lsn);
extern void rtsub_stream_close(void);

#endif							/* RTSUB_STREAM_H */
