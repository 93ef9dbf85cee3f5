/*-------------------------------------------------------------------------
 *
 * rtsub.h
 *	  Declarations shared by the parts of rtsub: settings, the expression
 *	  compiler for filters and policies, catalog access and the encoders.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_H
#define RTSUB_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/primnodes.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "utils/relcache.h"

#define RTSUB_SCHEMA			"rtsub"
#define RTSUB_PUBLICATION_TABLE	"publication"
#define RTSUB_MESSAGE_PREFIX	"rtsub"

/* src/filter.c: compile filters and policies */
typedef enum RtsubExprKind
{
	RTSUB_EXPR_FILTER,			/* subscription filter: may use parameters */
	RTSUB_EXPR_POLICY			/* permission policy: row and claims only */
} RtsubExprKind;

extern Node *rtsub_parse_row_expression(Relation rel, const char *source,
										RtsubExprKind kind, int nparams,
										char **param_names, Oid *param_types);

/* src/catalog.c: the rtsub catalogs, as seen by the output plugin */
typedef struct RtsubPublicationInfo
{
	bool		published;		/* the relation itself is published */
	bool		via_root;		/* report partitions under this table */
} RtsubPublicationInfo;

extern bool rtsub_catalog_available(void);
extern bool rtsub_lookup_publication(Oid relid, RtsubPublicationInfo *info);

/*
 * src/decoder.c: the in-process sink.  Inside the rtsub server the output
 * plugin hands every change to a sink instead of encoding it; the sink
 * copies what it needs (the tuples are freed after the callback) and the
 * server evaluates the changes after decoding, outside the callbacks.
 */
typedef struct RtsubSinkChange
{
	XLogRecPtr	commit_lsn;
	uint32		pos;			/* position in the transaction */
	TransactionId xid;
	TimestampTz commit_time;
	char		op;				/* 'I', 'U', 'D', 'T' or 'M' */
	Oid			relid;			/* reported relation (root for partitions) */
	const char *schema;
	const char *table;
	TupleDesc	desc;			/* descriptor of the reported relation */
	uint64		desc_version;	/* changes when desc may have changed */
	HeapTuple	newtup;			/* I, U: in desc's layout */
	HeapTuple	oldtup;			/* U, D: key columns or the whole row */
	bool		old_is_full;	/* oldtup is the whole row (REPLICA IDENTITY FULL) */
	bool		truncate_cascade;
	bool		truncate_restart;
	const char *prefix;			/* M */
	const char *content;		/* M */
	Size		content_size;	/* M */
} RtsubSinkChange;

typedef void (*RtsubSinkFunc) (void *arg, const RtsubSinkChange *change);

/* set by the server while it decodes; NULL elsewhere */
extern PGDLLIMPORT RtsubSinkFunc rtsub_sink;
extern PGDLLIMPORT void *rtsub_sink_arg;

#endif							/* RTSUB_H */
