/*-------------------------------------------------------------------------
 *
 * audit.c
 *	  Owns the rtsub server's audit table: with rtsub.audit_table on, every
 *	  audit line of the server (connections accepted or refused, tokens
 *	  rejected, subscribes granted or denied, slow consumers closed; the
 *	  lines rtsub.audit_log writes to the server log) becomes a row of
 *	  rtsub.audit_log.
 *
 *	  Lines are collected in the worker's memory as they happen and
 *	  inserted once per iteration of its loop, in one transaction with one
 *	  multi-row INSERT, so that auditing costs no transaction per event.
 *	  At most MAX_PENDING lines wait; more are counted and reported as one
 *	  row.  A failing INSERT (the extension is being dropped, ...) is
 *	  logged and its lines are dropped: auditing never stops the server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "audit.h"
#include "rtsub.h"

#define MAX_PENDING 10000

typedef struct AuditLine
{
	TimestampTz at;
	char	   *line;
} AuditLine;

static MemoryContext audit_cxt = NULL;
static List *pending = NIL;
static uint64 dropped = 0;

/* keep one audit line for the table */
void
rtsub_audit_record(const char *line)
{
	MemoryContext old;
	AuditLine  *a;

	if (list_length(pending) >= MAX_PENDING)
	{
		dropped++;
		return;
	}
	if (audit_cxt == NULL)
		audit_cxt = AllocSetContextCreate(TopMemoryContext, "rtsub audit",
										  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(audit_cxt);
	a = palloc(sizeof(AuditLine));
	a->at = GetCurrentTimestamp();
	a->line = pstrdup(line);
	pending = lappend(pending, a);
	MemoryContextSwitchTo(old);
}

/*
 * the event of a line: the text before its first ':' (or all of it),
 * without a " from <address>" ("connection refused from 10.0.0.1: ..." is
 * "connection refused")
 */
static char *
event_of(const char *line)
{
	const char *colon = strchr(line, ':');
	char	   *event = colon ? pnstrdup(line, colon - line) : pstrdup(line);
	char	   *from = strstr(event, " from ");

	if (from)
		*from = '\0';
	return event;
}

/* insert the waiting lines into rtsub.audit_log (called by the worker) */
void
rtsub_audit_flush(void)
{
	MemoryContext callercxt = CurrentMemoryContext;

	if (pending == NIL && dropped == 0)
		return;
	if (dropped > 0)
	{
		char		buf[128];

		snprintf(buf, sizeof(buf), "audit lines dropped: " UINT64_FORMAT " more than %d waited",
				 dropped, MAX_PENDING);
		dropped = 0;
		pending = list_delete_last(pending);
		rtsub_audit_record(buf);
	}

	PG_TRY();
	{
		int			n = list_length(pending);
		Datum	   *ats = palloc(sizeof(Datum) * n);
		Datum	   *events = palloc(sizeof(Datum) * n);
		Datum	   *lines = palloc(sizeof(Datum) * n);
		Oid			argtypes[3] = {TIMESTAMPTZARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
		Datum		args[3];
		int			i = 0;
		ListCell   *lc;

		foreach(lc, pending)
		{
			AuditLine  *a = lfirst(lc);

			ats[i] = TimestampTzGetDatum(a->at);
			events[i] = CStringGetTextDatum(event_of(a->line));
			lines[i] = CStringGetTextDatum(a->line);
			i++;
		}
		args[0] = PointerGetDatum(construct_array(ats, n, TIMESTAMPTZOID, sizeof(TimestampTz),
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[1] = PointerGetDatum(construct_array(events, n, TEXTOID, -1, false, TYPALIGN_INT));
		args[2] = PointerGetDatum(construct_array(lines, n, TEXTOID, -1, false, TYPALIGN_INT));

		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute_with_args("INSERT INTO rtsub.audit_log (at, event, detail) "
								  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))",
								  3, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert into rtsub.audit_log");
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(callercxt);
		if (geterrcode() == ERRCODE_ADMIN_SHUTDOWN ||
			geterrcode() == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		ereport(LOG,
				(errmsg("rtsub: %d audit lines could not be recorded in rtsub.audit_log",
						list_length(pending))));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);
	MemoryContextReset(audit_cxt);
	pending = NIL;
}
