/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The rtsub logical decoding output plugin: options, the relation
 *	  cache, and one record per change in JSON or MessagePack.
 *
 * Design notes
 *
 * Every callback switches into a per-change memory context under
 * ctx->context and resets it when done, so decoding a long transaction or
 * a huge value never accumulates memory across changes.
 *
 * What is emitted for a relation, and how (reported name, columns with
 * their encoding and output functions, replica-identity key columns, the
 * map from a partition to its root) is worked out once and kept in a hash
 * keyed by relation OID.  Entries are invalidated by a relcache callback:
 * ALTER TABLE, ATTACH/DETACH PARTITION, REPLICA IDENTITY and every change
 * to rtsub.publication (whose functions invalidate the published tables)
 * send relcache invalidations that decoding replays at the right point of
 * the stream, so a table altered or published mid-stream is described as it
 * was at each change.  Publication is read from rtsub.publication, a
 * user_catalog_table, under the historic snapshot.
 *
 * Records are written through the format-blind writer of encode.h.  Every
 * record carries the commit LSN and the change's position in its
 * transaction, which together identify it; the commit time is formatted
 * once per transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/tupconvert.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_index.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "access/xact.h"
#include "mb/pg_wchar.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "encode.h"
#include "rtsub.h"

extern void _PG_output_plugin_init(OutputPluginCallbacks *cb);

typedef enum OldRowMode
{
	OLD_ROW_AUTO,
	OLD_ROW_KEY,
	OLD_ROW_NONE
} OldRowMode;

typedef struct TablePattern
{
	char	   *schema;			/* NULL matches any */
	char	   *table;			/* NULL matches any */
} TablePattern;

/* What we know about one relation, rebuilt after invalidation */
typedef struct RelEntry
{
	Oid			relid;			/* hash key: the relation that changed */
	bool		valid;
	uint64		version;		/* changes whenever the entry is rebuilt */
	bool		emit;			/* its changes are emitted */
	MemoryContext cxt;			/* owns everything below */
	RtsubFormat format;			/* of the pre-encoded keys */
	Oid			report_relid;	/* reported under this relation */
	char	   *schema;
	char	   *table;
	StringInfoData names;		/* fragment: "schema" and "table" pairs */
	TupleDesc	desc;			/* descriptor of the reported relation */
	TupleConversionMap *map;	/* partition row -> root row, or NULL */
	char		replident;		/* replica identity of relid */
	int			ncols;			/* non-dropped columns of desc */
	RtsubColumn *cols;
	bool	   *is_key;			/* cols[i] is a replica identity column */
	int			nkeys;
} RelEntry;

/* Plugin state for one decoding session */
typedef struct RtsubData
{
	MemoryContext change_cxt;	/* reset after every callback */
	MemoryContext cache_cxt;	/* relation cache */

	/* options */
	RtsubFormat format;
	bool		include_lsn;
	bool		include_xid;
	bool		include_timestamp;
	bool		include_transaction;
	bool		include_messages;
	bool		partition_root;
	OldRowMode	old_row;
	bool		use_publication;	/* no tables option: published tables */
	RtsubSinkFunc sink;			/* in-process consumer, or NULL: encode */
	void	   *sink_arg;
	List	   *patterns;		/* tables option */

	/* current transaction */
	uint32		pos;
	uint64		nchanges;
	bool		txn_started;	/* B emitted / something emitted */
	bool		txn_strings;	/* the fragments below are set */
	StringInfoData lsn_frag;	/* fragment: the "lsn" pair */
	StringInfoData txn_frag;	/* fragment: the "xid" and "ts" pairs */

	StringInfoData scratch;
} RtsubData;

RtsubSinkFunc rtsub_sink = NULL;
void	   *rtsub_sink_arg = NULL;

static HTAB *RelCache = NULL;
static uint64 relcache_version = 0;
static bool relcache_callback_registered = false;

static void rtsub_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
						  bool is_init);
static void rtsub_shutdown(LogicalDecodingContext *ctx);
static void rtsub_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn);
static void rtsub_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						 XLogRecPtr commit_lsn);
static void rtsub_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						 Relation relation, ReorderBufferChange *change);
static void rtsub_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						   int nrelations, Relation relations[],
						   ReorderBufferChange *change);
static void rtsub_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						  XLogRecPtr message_lsn, bool transactional,
						  const char *prefix, Size message_size,
						  const char *message);

/* register the plugin's callbacks */
void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = rtsub_startup;
	cb->begin_cb = rtsub_begin;
	cb->change_cb = rtsub_change;
	cb->truncate_cb = rtsub_truncate;
	cb->commit_cb = rtsub_commit;
	cb->message_cb = rtsub_message;
	cb->shutdown_cb = rtsub_shutdown;
}

/* ----------------------------------------------------------------
 * Options
 * ----------------------------------------------------------------
 */

/* raise the error for a repeated option */
static void
option_repeated(DefElem *elem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" specified more than once", elem->defname)));
}

/* parse a boolean option value; a missing value means true */
static bool
option_bool(DefElem *elem)
{
	bool		result;

	if (elem->arg == NULL)
		return true;
	if (!parse_bool(strVal(elem->arg), &result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value \"%s\" for rtsub option \"%s\"",
						strVal(elem->arg), elem->defname),
				 errhint("Use a boolean: true or false.")));
	return result;
}

/* return a string option value, which must be present */
static char *
option_string(DefElem *elem, const char *valid)
{
	if (elem->arg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rtsub option \"%s\" requires a value", elem->defname),
				 errhint("Valid values: %s.", valid)));
	return strVal(elem->arg);
}

/* raise the error for a bad option value */
static void
option_invalid(DefElem *elem, const char *valid)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value \"%s\" for rtsub option \"%s\"",
					strVal(elem->arg), elem->defname),
			 errhint("Valid values: %s.", valid)));
}

/* parse the tables option: "*" or a list of schema.table patterns */
static List *
parse_table_patterns(DefElem *elem)
{
	const char *valid = "\"*\" or a comma-separated list of schema.table, where either part may be *";
	char	   *value = pstrdup(option_string(elem, valid));
	List	   *result = NIL;
	char	   *item;
	char	   *saveptr = NULL;

	for (item = strtok_r(value, ",", &saveptr); item != NULL;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		TablePattern *p = palloc0(sizeof(TablePattern));
		char	   *dot;
		char	   *end;

		while (*item == ' ' || *item == '\t')
			item++;
		end = item + strlen(item);
		while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';

		if (strcmp(item, "*") == 0)
		{
			result = lappend(result, p);
			continue;
		}
		dot = strchr(item, '.');
		if (dot == NULL || dot == item || dot[1] == '\0' || strchr(dot + 1, '.'))
			option_invalid(elem, valid);
		*dot = '\0';
		p->schema = strcmp(item, "*") == 0 ? NULL : pstrdup(item);
		p->table = strcmp(dot + 1, "*") == 0 ? NULL : pstrdup(dot + 1);
		result = lappend(result, p);
	}
	if (result == NIL)
		option_invalid(elem, valid);
	return result;
}

/* The boolean options, each with a given flag in parse_options */
static const struct
{
	const char *name;
	size_t		offset;			/* of the bool in RtsubData */
}			bool_options[] =
{
	{"include_lsn", offsetof(RtsubData, include_lsn)},
	{"include_xid", offsetof(RtsubData, include_xid)},
	{"include_timestamp", offsetof(RtsubData, include_timestamp)},
	{"include_transaction", offsetof(RtsubData, include_transaction)},
	{"include_messages", offsetof(RtsubData, include_messages)},
	{"partition_root", offsetof(RtsubData, partition_root)},
};

/* parse all options; unknown or repeated ones are errors */
static void
parse_options(RtsubData *data, List *options)
{
	ListCell   *lc;
	bool		format_given = false;
	bool		tables_given = false;
	bool		old_row_given = false;
	bool		bool_given[lengthof(bool_options)] = {0};

	data->format = RTSUB_FORMAT_JSON;
	data->include_lsn = true;
	data->include_xid = true;
	data->include_timestamp = true;
	data->include_transaction = false;
	data->include_messages = true;
	data->partition_root = false;
	data->old_row = OLD_ROW_AUTO;
	data->use_publication = true;
	data->patterns = NIL;

	foreach(lc, options)
	{
		DefElem    *elem = lfirst(lc);

		Assert(elem->arg == NULL || IsA(elem->arg, String));

		if (strcmp(elem->defname, "format") == 0)
		{
			const char *valid = "json, msgpack";
			char	   *v;

			if (format_given)
				option_repeated(elem);
			format_given = true;
			v = option_string(elem, valid);
			if (strcmp(v, "json") == 0)
				data->format = RTSUB_FORMAT_JSON;
			else if (strcmp(v, "msgpack") == 0)
				data->format = RTSUB_FORMAT_MSGPACK;
			else
				option_invalid(elem, valid);
		}
		else if (strcmp(elem->defname, "tables") == 0)
		{
			if (tables_given)
				option_repeated(elem);
			tables_given = true;
			data->use_publication = false;
			data->patterns = parse_table_patterns(elem);
		}
		else if (strcmp(elem->defname, "old_row") == 0)
		{
			const char *valid = "auto, key, none";
			char	   *v;

			if (old_row_given)
				option_repeated(elem);
			old_row_given = true;
			v = option_string(elem, valid);
			if (strcmp(v, "auto") == 0)
				data->old_row = OLD_ROW_AUTO;
			else if (strcmp(v, "key") == 0)
				data->old_row = OLD_ROW_KEY;
			else if (strcmp(v, "none") == 0)
				data->old_row = OLD_ROW_NONE;
			else
				option_invalid(elem, valid);
		}
		else
		{
			int			i;

			for (i = 0; i < lengthof(bool_options); i++)
			{
				if (strcmp(elem->defname, bool_options[i].name) == 0)
				{
					if (bool_given[i])
						option_repeated(elem);
					bool_given[i] = true;
					*(bool *) ((char *) data + bool_options[i].offset) = option_bool(elem);
					break;
				}
			}
			if (i == lengthof(bool_options))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unrecognized rtsub option \"%s\"", elem->defname),
						 errhint("Valid options: format, tables, include_lsn, include_xid, include_timestamp, include_transaction, include_messages, old_row, partition_root.")));
		}
	}
}

/* ----------------------------------------------------------------
 * Startup and shutdown
 * ----------------------------------------------------------------
 */

/* drop the relation cache pointer when its memory goes away */
static void
relcache_reset_callback(void *arg)
{
	RelCache = NULL;
}

/* invalidate relation cache entries for relid (or all, for InvalidOid) */
static void
relcache_inval_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RelEntry   *entry;

	if (RelCache == NULL)
		return;
	hash_seq_init(&status, RelCache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid ||
			entry->report_relid == relid)
			entry->valid = false;
	}
}

/* set up plugin state, parse options, choose textual or binary output */
static void
rtsub_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
			  bool is_init)
{
	RtsubData  *data = palloc0(sizeof(RtsubData));
	HASHCTL		hctl;
	MemoryContextCallback *cb;

	data->change_cxt = AllocSetContextCreate(ctx->context,
											 "rtsub change context",
											 ALLOCSET_DEFAULT_SIZES);
	data->cache_cxt = AllocSetContextCreate(ctx->context,
											"rtsub relation cache",
											ALLOCSET_SMALL_SIZES);
	ctx->output_plugin_private = data;
	initStringInfo(&data->lsn_frag);
	initStringInfo(&data->txn_frag);

	parse_options(data, ctx->output_plugin_options);
	data->sink = rtsub_sink;
	data->sink_arg = rtsub_sink_arg;

	opt->output_type = (data->format == RTSUB_FORMAT_MSGPACK) ?
		OUTPUT_PLUGIN_BINARY_OUTPUT : OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;

	/*
	 * Without a tables option the published tables are emitted, which needs
	 * the extension.  Check now when we can (SQL interface, in a
	 * transaction); the walsender path finds out at the first change.
	 */
	if (!is_init && data->use_publication && IsTransactionState() &&
		!OidIsValid(get_extension_oid("rtsub", true)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rtsub extension is not installed in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errdetail("Without the \"tables\" option the plugin emits the tables published with rtsub.publish()."),
				 errhint("Run CREATE EXTENSION rtsub, or pass the option tables '*'.")));

	memset(&hctl, 0, sizeof(hctl));
	hctl.keysize = sizeof(Oid);
	hctl.entrysize = sizeof(RelEntry);
	hctl.hcxt = data->cache_cxt;
	RelCache = hash_create("rtsub relation cache", 64, &hctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	cb = MemoryContextAlloc(data->cache_cxt, sizeof(MemoryContextCallback));
	cb->func = relcache_reset_callback;
	cb->arg = NULL;
	MemoryContextRegisterResetCallback(data->cache_cxt, cb);

	if (!relcache_callback_registered)
	{
		CacheRegisterRelcacheCallback(relcache_inval_callback, (Datum) 0);
		relcache_callback_registered = true;
	}
}

/* release plugin state */
static void
rtsub_shutdown(LogicalDecodingContext *ctx)
{
	RtsubData  *data = ctx->output_plugin_private;

	MemoryContextDelete(data->cache_cxt);
	MemoryContextDelete(data->change_cxt);
	RelCache = NULL;
}

/* ----------------------------------------------------------------
 * Relation cache
 * ----------------------------------------------------------------
 */

/* does schema.table match one of the patterns? */
static bool
matches_patterns(List *patterns, const char *schema, const char *table)
{
	ListCell   *lc;

	foreach(lc, patterns)
	{
		TablePattern *p = lfirst(lc);

		if ((p->schema == NULL || strcmp(p->schema, schema) == 0) &&
			(p->table == NULL || strcmp(p->table, table) == 0))
			return true;
	}
	return false;
}

/* does the tables option select relid (by its own or its schema's name)? */
static bool
relid_matches_patterns(List *patterns, Oid relid)
{
	char	   *nsp = get_namespace_name(get_rel_namespace(relid));
	char	   *rel = get_rel_name(relid);

	return nsp && rel && matches_patterns(patterns, nsp, rel);
}

/*
 * Decide whether relation's changes are emitted and under which relation
 * they are reported.
 */
static void
decide_emission(RtsubData *data, Relation relation, bool *emit, Oid *report)
{
	Oid			relid = RelationGetRelid(relation);
	List	   *ancestors = NIL;
	ListCell   *lc;

	*emit = false;
	*report = relid;

	if (relation->rd_rel->relispartition)
		ancestors = get_partition_ancestors(relid);

	if (!data->use_publication)
	{
		*emit = relid_matches_patterns(data->patterns, relid);
		foreach(lc, ancestors)
		{
			if (*emit)
				break;
			*emit = relid_matches_patterns(data->patterns, lfirst_oid(lc));
		}
		if (*emit && data->partition_root && ancestors != NIL)
			*report = llast_oid(ancestors);
		return;
	}

	{
		RtsubPublicationInfo info;
		Oid			via_root_relid = InvalidOid;

		if (!rtsub_lookup_publication(relid, &info))
		{
			if (data->sink)
				return;			/* the server reports this itself */
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("rtsub extension is not installed in database \"%s\"",
							get_database_name(MyDatabaseId)),
					 errdetail("No table is published, so no change is emitted."),
					 errhint("Run CREATE EXTENSION rtsub, or pass the option tables '*'.")));
			return;
		}
		*emit = info.published;

		/* a published ancestor publishes its partitions */
		foreach(lc, ancestors)
		{
			Oid			anc = lfirst_oid(lc);

			rtsub_lookup_publication(anc, &info);
			if (info.published)
			{
				*emit = true;
				if (info.via_root)
					via_root_relid = anc;	/* keep the topmost */
			}
		}
		if (*emit && ancestors != NIL)
		{
			if (data->partition_root)
				*report = llast_oid(ancestors);
			else if (OidIsValid(via_root_relid))
				*report = via_root_relid;
		}
	}
}

/*
 * Return the key columns of relation (offset by
 * FirstLowInvalidHeapAttributeNumber): those of the replica identity index,
 * or for REPLICA IDENTITY FULL those of the primary key, if any.
 */
static Bitmapset *
identity_key_attrs(Relation relation)
{
	Bitmapset  *result = RelationGetIdentityKeyBitmap(relation);
	HeapTuple	tup;
	Form_pg_index index;
	int			i;

	if (result != NULL || relation->rd_rel->relreplident != REPLICA_IDENTITY_FULL)
		return result;

	list_free(RelationGetIndexList(relation));	/* sets rd_pkindex */
	if (!OidIsValid(relation->rd_pkindex))
		return NULL;
	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(relation->rd_pkindex));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for index %u", relation->rd_pkindex);
	index = (Form_pg_index) GETSTRUCT(tup);
	for (i = 0; i < index->indnkeyatts; i++)
		result = bms_add_member(result, index->indkey.values[i] -
								FirstLowInvalidHeapAttributeNumber);
	ReleaseSysCache(tup);
	return result;
}

/* fill the column descriptions of an entry from its reported descriptor */
static void
build_columns(RelEntry *entry, Relation relation)
{
	TupleDesc	desc = entry->desc;
	Bitmapset  *keyattrs = identity_key_attrs(relation);
	int			i;

	entry->cols = palloc0(sizeof(RtsubColumn) * Max(desc->natts, 1));
	entry->is_key = palloc0(sizeof(bool) * Max(desc->natts, 1));
	entry->ncols = 0;
	entry->nkeys = 0;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		RtsubColumn *col;
		AttrNumber	leafatt = att->attnum;

		if (att->attisdropped)
			continue;

		col = &entry->cols[entry->ncols];
		col->attnum = att->attnum;
		rtsub_column_init(col, NameStr(att->attname), att->atttypid,
						  entry->format, entry->cxt);

		/* key columns are known by the changed relation's numbering */
		if (entry->map != NULL)
			leafatt = entry->map->attrMap->attnums[i];
		if (leafatt > 0 &&
			bms_is_member(leafatt - FirstLowInvalidHeapAttributeNumber, keyattrs))
		{
			entry->is_key[entry->ncols] = true;
			entry->nkeys++;
		}
		entry->ncols++;
	}
}

/* return the valid cache entry for relation, building it if needed */
static RelEntry *
get_rel_entry(RtsubData *data, Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	RelEntry   *entry;
	bool		found;
	MemoryContext oldcxt;
	Relation	report_rel;

	entry = hash_search(RelCache, &relid, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry;

	if (found && entry->cxt != NULL)
		MemoryContextDelete(entry->cxt);
	entry->cxt = NULL;
	entry->valid = false;
	entry->emit = false;
	entry->report_relid = relid;

	decide_emission(data, relation, &entry->emit, &entry->report_relid);

	entry->cxt = AllocSetContextCreate(data->cache_cxt, "rtsub relation",
									   ALLOCSET_SMALL_SIZES);
	entry->version = ++relcache_version;
	if (entry->emit)
	{
		oldcxt = MemoryContextSwitchTo(entry->cxt);

		report_rel = (entry->report_relid == relid) ? relation :
			RelationIdGetRelation(entry->report_relid);
		if (!RelationIsValid(report_rel))
			elog(ERROR, "could not open relation with OID %u",
				 entry->report_relid);

		entry->schema = get_namespace_name(RelationGetNamespace(report_rel));
		entry->table = pstrdup(RelationGetRelationName(report_rel));
		entry->format = data->format;
		{
			RtsubWriter fw;

			initStringInfo(&entry->names);
			rtsub_fragment_begin(&fw, &entry->names, data->format);
			rtsub_put_kv_str(&fw, "schema", entry->schema);
			rtsub_put_kv_str(&fw, "table", entry->table);
		}
		entry->desc = CreateTupleDescCopy(RelationGetDescr(report_rel));
		entry->replident = relation->rd_rel->relreplident;
		entry->map = NULL;
		if (report_rel != relation)
		{
			entry->map = convert_tuples_by_name(CreateTupleDescCopy(RelationGetDescr(relation)),
												entry->desc);
			RelationClose(report_rel);
		}
		build_columns(entry, relation);

		MemoryContextSwitchTo(oldcxt);
	}
	entry->valid = true;
	return entry;
}

/* ----------------------------------------------------------------
 * Records
 * ----------------------------------------------------------------
 */

/* encode the transaction's lsn, xid and commit time pairs once */
static void
prepare_txn_strings(RtsubData *data, ReorderBufferTXN *txn)
{
	RtsubWriter fw;
	char		buf[32];

	if (data->txn_strings)
		return;

	rtsub_fragment_begin(&fw, &data->lsn_frag, data->format);
	if (data->include_lsn)
	{
		snprintf(buf, sizeof(buf), "%X/%X", LSN_FORMAT_ARGS(txn->final_lsn));
		rtsub_put_kv_str(&fw, "lsn", buf);
	}

	rtsub_fragment_begin(&fw, &data->txn_frag, data->format);
	if (data->include_xid)
	{
		fw.enc->key(&fw, "xid", 3);
		fw.enc->int64(&fw, txn->xid);
	}
	if (data->include_timestamp)
	{
		fw.enc->key(&fw, "ts", 2);
		fw.enc->instant(&fw, txn->xact_time.commit_time);
	}
	data->txn_strings = true;
}

/* number of header keys written by write_header */
static int
header_count(RtsubData *data, bool with_pos)
{
	return (data->include_lsn ? (with_pos ? 2 : 1) : 0) +
		(data->include_xid ? 1 : 0) +
		(data->include_timestamp ? 1 : 0) + 1;
}

/* open a record map of header plus extra keys and write the header */
static void
write_header(RtsubData *data, RtsubWriter *w, ReorderBufferTXN *txn,
			 const char *op, bool with_pos, int extra)
{
	const RtsubEncoder *e = w->enc;

	prepare_txn_strings(data, txn);
	e->map_begin(w, header_count(data, with_pos) + extra);
	e->fragment(w, data->lsn_frag.data, data->lsn_frag.len);
	if (data->include_lsn && with_pos)
	{
		e->key(w, "pos", 3);
		e->int64(w, data->pos);
	}
	e->fragment(w, data->txn_frag.data, data->txn_frag.len);
	e->key(w, "op", 2);
	e->str(w, op, 1);
}

/* start an output message and a writer on ctx->out */
static void
record_begin(LogicalDecodingContext *ctx, RtsubWriter *w, bool last)
{
	RtsubData  *data = ctx->output_plugin_private;

	OutputPluginPrepareWrite(ctx, last);
	rtsub_writer_init(w, ctx->out, data->format);
}

/* emit the B record before the first record of a transaction */
static void
ensure_txn_started(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	RtsubData  *data = ctx->output_plugin_private;
	RtsubWriter w;

	if (data->txn_started)
		return;
	data->txn_started = true;
	if (!data->include_transaction)
		return;
	record_begin(ctx, &w, false);
	write_header(data, &w, txn, "B", false, 0);
	w.enc->map_end(&w);
	OutputPluginWrite(ctx, false);
}

/* write the columns of a row selected by keys_only as a map */
static void
write_row(RelEntry *entry, RtsubWriter *w, Datum *values, bool *nulls,
		  bool *skip, bool keys_only)
{
	const RtsubEncoder *e = w->enc;
	int			n = 0;
	int			i;

	for (i = 0; i < entry->ncols; i++)
		if ((!keys_only || entry->is_key[i]) && !(skip && skip[i]))
			n++;

	e->map_begin(w, n);
	for (i = 0; i < entry->ncols; i++)
	{
		RtsubColumn *col = &entry->cols[i];
		int			att = col->attnum - 1;

		if ((keys_only && !entry->is_key[i]) || (skip && skip[i]))
			continue;
		rtsub_column_key(w, col);
		if (nulls[att])
			e->null(w);
		else
			e->value(w, col, values[att]);
	}
	e->map_end(w);
}

/* write an I, U or D record */
static void
write_change(RtsubData *data, RtsubWriter *w, ReorderBufferTXN *txn,
			 RelEntry *entry, const char *op, HeapTuple newtup,
			 HeapTuple oldtup)
{
	const RtsubEncoder *e = w->enc;
	TupleDesc	desc = entry->desc;
	int			natts = desc->natts;
	Datum	   *newvals = NULL;
	bool	   *newnulls = NULL;
	Datum	   *oldvals = NULL;
	bool	   *oldnulls = NULL;
	bool	   *unchanged = NULL;
	int			nunchanged = 0;
	bool		old_is_full = (entry->replident == REPLICA_IDENTITY_FULL);
	const char *oldkey = NULL;
	int			extra = 2;		/* schema, table */
	int			i;

	if (oldtup != NULL)
	{
		oldvals = palloc(sizeof(Datum) * natts);
		oldnulls = palloc(sizeof(bool) * natts);
		heap_deform_tuple(oldtup, desc, oldvals, oldnulls);
		if (data->old_row == OLD_ROW_AUTO)
			oldkey = old_is_full ? "old" : "key";
		else if (data->old_row == OLD_ROW_KEY)
			oldkey = "key";
		if (oldkey && strcmp(oldkey, "key") == 0 && entry->nkeys == 0)
			oldkey = NULL;
	}

	if (newtup != NULL)
	{
		newvals = palloc(sizeof(Datum) * natts);
		newnulls = palloc(sizeof(bool) * natts);
		heap_deform_tuple(newtup, desc, newvals, newnulls);

		/* unchanged TOASTed values: take them from a full old row, or mark */
		for (i = 0; i < entry->ncols; i++)
		{
			int			att = entry->cols[i].attnum - 1;

			if (newnulls[att] || TupleDescAttr(desc, att)->attlen != -1 ||
				!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(newvals[att])))
				continue;
			if (oldtup != NULL && old_is_full && !oldnulls[att] &&
				!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(oldvals[att])))
			{
				newvals[att] = oldvals[att];
				continue;
			}
			if (unchanged == NULL)
				unchanged = palloc0(sizeof(bool) * entry->ncols);
			unchanged[i] = true;
			nunchanged++;
		}
		extra++;
	}
	if (oldkey)
		extra++;
	if (nunchanged > 0)
		extra++;

	write_header(data, w, txn, op, true, extra);
	e->fragment(w, entry->names.data, entry->names.len);
	if (newtup != NULL)
	{
		e->key(w, "new", 3);
		write_row(entry, w, newvals, newnulls, unchanged, false);
	}
	if (oldkey)
	{
		e->key(w, oldkey, 3);
		write_row(entry, w, oldvals, oldnulls, NULL, oldkey[0] == 'k');
	}
	if (nunchanged > 0)
	{
		e->key(w, "unchanged", 9);
		e->array_begin(w, nunchanged);
		for (i = 0; i < entry->ncols; i++)
			if (unchanged[i])
				e->str(w, entry->cols[i].name, entry->cols[i].namelen);
		e->array_end(w);
	}
	e->map_end(w);
}

/* hand a change to the in-process sink */
static void
sink_change(RtsubData *data, ReorderBufferTXN *txn, RelEntry *entry,
			char op, HeapTuple newtup, HeapTuple oldtup, RtsubSinkChange *c)
{
	c->commit_lsn = txn->final_lsn;
	c->pos = data->pos;
	c->xid = txn->xid;
	c->commit_time = txn->xact_time.commit_time;
	c->op = op;
	if (entry != NULL)
	{
		c->relid = entry->report_relid;
		c->schema = entry->schema;
		c->table = entry->table;
		c->desc = entry->desc;
		c->desc_version = entry->version;
		c->old_is_full = (entry->replident == REPLICA_IDENTITY_FULL);
	}
	c->newtup = newtup;
	c->oldtup = oldtup;
	data->sink(data->sink_arg, c);
}

/* ----------------------------------------------------------------
 * Callbacks
 * ----------------------------------------------------------------
 */

/* BEGIN: reset the per-transaction state; records are emitted lazily */
static void
rtsub_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	RtsubData  *data = ctx->output_plugin_private;

	data->pos = 0;
	data->nchanges = 0;
	data->txn_started = false;
	data->txn_strings = false;
}

/* COMMIT: emit the C record if the transaction emitted anything */
static void
rtsub_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			 XLogRecPtr commit_lsn)
{
	RtsubData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt;
	RtsubWriter w;

	if (!data->txn_started || !data->include_transaction)
		return;
	oldcxt = MemoryContextSwitchTo(data->change_cxt);
	record_begin(ctx, &w, true);
	write_header(data, &w, txn, "C", false, 1);
	w.enc->key(&w, "changes", 7);
	w.enc->int64(&w, (int64) data->nchanges);
	w.enc->map_end(&w);
	OutputPluginWrite(ctx, true);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->change_cxt);
}

/* INSERT, UPDATE, DELETE: one record if the table is emitted */
static void
rtsub_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			 Relation relation, ReorderBufferChange *change)
{
	RtsubData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt;
	RelEntry   *entry;
	HeapTuple	newtup = NULL;
	HeapTuple	oldtup = NULL;
	const char *op;
	RtsubWriter w;

	oldcxt = MemoryContextSwitchTo(data->change_cxt);
	entry = get_rel_entry(data, relation);
	if (!entry->emit)
		goto done;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			op = "I";
			if (change->data.tp.newtuple)
				newtup = &change->data.tp.newtuple->tuple;
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			op = "U";
			if (change->data.tp.newtuple)
				newtup = &change->data.tp.newtuple->tuple;
			if (change->data.tp.oldtuple)
				oldtup = &change->data.tp.oldtuple->tuple;
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			op = "D";
			if (change->data.tp.oldtuple)
				oldtup = &change->data.tp.oldtuple->tuple;
			break;
		default:
			goto done;
	}

	if (entry->map != NULL)
	{
		if (newtup)
			newtup = execute_attr_map_tuple(newtup, entry->map);
		if (oldtup)
			oldtup = execute_attr_map_tuple(oldtup, entry->map);
	}

	if (data->sink)
	{
		RtsubSinkChange c = {0};

		sink_change(data, txn, entry, op[0], newtup, oldtup, &c);
	}
	else
	{
		ensure_txn_started(ctx, txn);
		record_begin(ctx, &w, true);
		write_change(data, &w, txn, entry, op, newtup, oldtup);
		OutputPluginWrite(ctx, true);
	}
	data->pos++;
	data->nchanges++;

done:
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->change_cxt);
}

/* TRUNCATE: one record per emitted table (per root, for partitions) */
static void
rtsub_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   int nrelations, Relation relations[],
			   ReorderBufferChange *change)
{
	RtsubData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt;
	int			i;

	Oid		   *reported;
	int			nreported = 0;

	oldcxt = MemoryContextSwitchTo(data->change_cxt);
	reported = palloc(sizeof(Oid) * nrelations);
	for (i = 0; i < nrelations; i++)
	{
		RelEntry   *entry = get_rel_entry(data, relations[i]);
		RtsubWriter w;
		int			j;

		if (!entry->emit)
			continue;
		/* partitions reported under one root make one record */
		for (j = 0; j < nreported; j++)
			if (reported[j] == entry->report_relid)
				break;
		if (j < nreported)
			continue;
		reported[nreported++] = entry->report_relid;
		if (data->sink)
		{
			RtsubSinkChange c = {0};

			c.truncate_cascade = change->data.truncate.cascade;
			c.truncate_restart = change->data.truncate.restart_seqs;
			sink_change(data, txn, entry, 'T', NULL, NULL, &c);
			data->pos++;
			data->nchanges++;
			continue;
		}
		ensure_txn_started(ctx, txn);
		record_begin(ctx, &w, true);
		write_header(data, &w, txn, "T", true, 4);
		w.enc->fragment(&w, entry->names.data, entry->names.len);
		w.enc->key(&w, "cascade", 7);
		w.enc->boolean(&w, change->data.truncate.cascade);
		w.enc->key(&w, "restart_identity", 16);
		w.enc->boolean(&w, change->data.truncate.restart_seqs);
		w.enc->map_end(&w);
		OutputPluginWrite(ctx, true);
		data->pos++;
		data->nchanges++;
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->change_cxt);
}

/* is this a message prefix we emit: "rtsub" or "rtsub:..."? */
static bool
is_rtsub_prefix(const char *prefix)
{
	size_t		n = strlen(RTSUB_MESSAGE_PREFIX);

	return strncmp(prefix, RTSUB_MESSAGE_PREFIX, n) == 0 &&
		(prefix[n] == '\0' || prefix[n] == ':');
}

/* transactional logical message with an rtsub prefix: an M record */
static void
rtsub_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  XLogRecPtr message_lsn, bool transactional,
			  const char *prefix, Size message_size, const char *message)
{
	RtsubData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt;
	RtsubWriter w;
	bool		is_text;

	if (!transactional || !data->include_messages || txn == NULL ||
		!is_rtsub_prefix(prefix))
		return;

	oldcxt = MemoryContextSwitchTo(data->change_cxt);
	is_text = pg_verifymbstr(message, (int) message_size, true) &&
		memchr(message, '\0', message_size) == NULL;

	if (data->sink)
	{
		RtsubSinkChange c = {0};

		c.prefix = prefix;
		c.content = message;
		c.content_size = message_size;
		sink_change(data, txn, NULL, 'M', NULL, NULL, &c);
		data->pos++;
		data->nchanges++;
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(data->change_cxt);
		return;
	}
	ensure_txn_started(ctx, txn);
	record_begin(ctx, &w, true);
	write_header(data, &w, txn, "M", true, 2);
	rtsub_put_kv_str(&w, "prefix", prefix);
	if (is_text)
	{
		w.enc->key(&w, "content", 7);
		w.enc->str(&w, pnstrdup(message, message_size), (int) message_size);
	}
	else
	{
		if (data->format == RTSUB_FORMAT_JSON)
			w.enc->key(&w, "content_hex", 11);
		else
			w.enc->key(&w, "content", 7);
		w.enc->bin(&w, message, (int) message_size);
	}
	w.enc->map_end(&w);
	OutputPluginWrite(ctx, true);
	data->pos++;
	data->nchanges++;

	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->change_cxt);
}
