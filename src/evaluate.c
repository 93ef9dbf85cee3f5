/*-------------------------------------------------------------------------
 *
 * evaluate.c
 *	  The subscription engine of the rtsub server: opening a client's
 *	  subscription (catalog lookup, role and privilege checks, parameters,
 *	  compiling its filter and the table's policies), and evaluating every
 *	  decoded change for every subscription of its table, in-process.
 *
 * Design notes
 *
 * Open subscriptions are indexed by table OID, so a change is evaluated only
 * against the subscriptions of its table.  Each subscription compiles its
 * filter and the policies that apply to its role once, with
 * ExecInitExpr: parameters become PARAM_EXTERN values bound once, and the
 * client's claims are folded into constants (calls of rtsub.claim(),
 * rtsub.claims() and current_setting('request.jwt.claims') are replaced
 * before planning), so evaluating a change costs a few expression steps and
 * never a query.
 *
 * Visibility follows PostgreSQL's rules: a row is visible when the filter,
 * at least one permissive policy (if the table has policies for the role)
 * and every restrictive policy pass.  An UPDATE is evaluated on the old and
 * the new row: leaving the view becomes a delete, entering it an insert.
 * Old rows are complete only with REPLICA IDENTITY FULL; without it, a row
 * whose old version cannot be evaluated is never reported as deleted (that
 * could reveal a key the subscriber never saw), so such tables should be
 * published with replica_identity_full when filters or policies use
 * non-key columns.
 *
 * Only columns the role may SELECT (and the subscription lists) are sent;
 * a filter may only use columns the role may SELECT.
 *
 * Evaluation runs after each decoded batch, in one transaction with a
 * fresh snapshot (stable functions, TOAST); an ERROR while evaluating one
 * subscription is reported to its client and does not stop the others.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "common/hashfn.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "rewrite/rowsecurity.h"
#include "utils/snapmgr.h"

#include "access/tableam.h"
#include "access/tupconvert.h"
#include "catalog/pg_inherits.h"

#include "config.h"
#include "encode.h"
#include "evaluate.h"
#include "snapshot.h"
#include "window.h"
#include "worker.h"
#include "protocol.h"
#include "rtsub.h"
#include "session.h"
#include "shmem.h"
#include "stream.h"

/*
 * Where a subscription is: reading its snapshot (changes wait in the
 * window), catching up from the window (after a snapshot or a resume), or
 * live (evaluated as changes are decoded).
 */
typedef enum SubState
{
	SUB_SNAPSHOT,
	SUB_CATCHUP,
	SUB_LIVE
} SubState;

struct RtsubSubscription
{
	RtsubSession *session;
	MemoryContext cxt;			/* owns everything below */
	char	   *client_id;		/* the subscribe message's id */
	char	   *name;			/* subscription name */
	Oid			relid;
	Oid			roleid;
	RtsubFormat format;
	bool		include_metadata;
	SubState	state;
	RtsubPos	cursor;			/* events up to here are done with */
	RtsubSnapshotHorizon *horizon;	/* the snapshot's, while its changes
									 * may still come; NULL: none */
	bool		awaiting_horizon;	/* snapshot started, horizon not known */
	bool		live_pending;	/* send `live` once the horizon is passed */
	RtsubSnapshotReader *reader;	/* while SUB_SNAPSHOT */
	bool		ended;			/* reset or stopped: the session forgets it */
	int			natts;			/* the table's columns when opened */
	Oid		   *atttypes;		/* and their types (InvalidOid: dropped) */
	TupleDesc	checked_desc;	/* last change descriptor found compatible */
	uint64		messages_sent;	/* change messages queued for the client */
	char	   *relname;		/* the table's name when opened */
	MemoryContext open_scratch; /* open_in_transaction's, until it is done */
	int			priority;		/* of its messages at the session (0-9) */
	int			batch_size;		/* events per `changes` message; 1: `change` */
	int			throttle_ms;	/* how long a batch may wait */
	StringInfoData batch;		/* encoded change bodies waiting */
	int			nbatch;
	TimestampTz batch_deadline;	/* when the waiting batch goes out */
	TimestampTz batch_commit_time;	/* of its first change */
	ExprState  *filter;			/* NULL: every row */
	List	   *permissive;		/* ExprState *, policies for the role */
	List	   *restrictive;
	bool		has_policies;	/* the table has policies for the role */
	bool		has_rls;		/* native row-level security applies */
	List	   *rls_permissive; /* ExprState *, the table's own RLS policies */
	List	   *rls_restrictive;
	ParamListInfo params;
	int			ncols;
	RtsubColumn *cols;			/* permitted and selected, in table order */
	bool		failed;			/* an ERROR stopped it; reported */
};

typedef struct RelSubs
{
	Oid			relid;			/* hash key */
	List	   *subs;			/* RtsubSubscription * */
} RelSubs;

/* shared column descriptions (see build_columns) */
typedef struct ColumnsEntry
{
	char	   *key;			/* hash key: table, format, columns */
	RtsubColumn *cols;
	int			ncols;
} ColumnsEntry;

static HTAB *columns_cache = NULL;

/* hash and compare of keys that are pointers to C strings */
static uint32
string_hash_ptr(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return string_hash(s, strlen(s) + 1);
}

static int
string_match_ptr(const void *a, const void *b, Size keysize)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static HTAB *subs_by_rel = NULL;
static MemoryContext engine_cxt = NULL;
static int	nsubs = 0;
static List *pending = NIL;		/* subscriptions not live, or live_pending */
static List *ended = NIL;		/* subscriptions to hand back to sessions */
static uint64 nevaluated = 0;	/* evaluations not yet counted in shmem */
static List *batching = NIL;	/* subscriptions with a batch waiting */

static long flush_due_batches(TimestampTz now);

/* add the evaluations done to the shared counter */
static void
flush_counts(void)
{
	if (rtsub_shared && nevaluated > 0)
		pg_atomic_fetch_add_u64(&rtsub_shared->changes_evaluated, nevaluated);
	nevaluated = 0;
}

/* set up the registry on first use */
static void
ensure_registry(void)
{
	HASHCTL		ctl;

	if (subs_by_rel != NULL)
		return;
	engine_cxt = AllocSetContextCreate(TopMemoryContext, "rtsub subscriptions",
									   ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RelSubs);
	ctl.hcxt = engine_cxt;
	subs_by_rel = hash_create("rtsub subscriptions by table", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* ----------------------------------------------------------------
 * Compiling expressions
 * ----------------------------------------------------------------
 */

typedef struct ClaimsContext
{
	Oid			claim_fn;		/* rtsub.claim(text) */
	Oid			claims_fn;		/* rtsub.claims() */
	Jsonb	   *claims;
	const char *claims_json;
} ClaimsContext;

/* a text constant, or a NULL one */
static Node *
text_const(const char *s)
{
	if (s == NULL)
		return (Node *) makeNullConst(TEXTOID, -1, DEFAULT_COLLATION_OID);
	return (Node *) makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
							  CStringGetTextDatum(s), false, false);
}

/* the text value of one claim, as ->> gives it, or NULL */
static char *
claim_text(Jsonb *claims, const char *name)
{
	JsonbValue	key;
	JsonbValue *v;

	key.type = jbvString;
	key.val.string.val = (char *) name;
	key.val.string.len = strlen(name);
	v = findJsonbValueFromContainer(&claims->root, JB_FOBJECT, &key);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
}

/* replace claim lookups by the client's claims as constants */
static Node *
fold_claims(Node *node, ClaimsContext *cc)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, FuncExpr))
	{
		FuncExpr   *f = (FuncExpr *) node;

		if (f->funcid == cc->claims_fn && f->args == NIL)
			return (Node *) makeConst(JSONBOID, -1, InvalidOid, -1,
									  JsonbPGetDatum(cc->claims), false, false);
		if (f->funcid == cc->claim_fn && list_length(f->args) == 1 &&
			IsA(linitial(f->args), Const) &&
			!((Const *) linitial(f->args))->constisnull)
		{
			char	   *name = TextDatumGetCString(((Const *) linitial(f->args))->constvalue);

			return text_const(claim_text(cc->claims, name));
		}
		/* PostgREST style: current_setting('request.jwt.claims'[, missing_ok]) */
		if ((f->funcid == F_CURRENT_SETTING_TEXT ||
			 f->funcid == F_CURRENT_SETTING_TEXT_BOOL) &&
			IsA(linitial(f->args), Const) &&
			!((Const *) linitial(f->args))->constisnull)
		{
			char	   *name = TextDatumGetCString(((Const *) linitial(f->args))->constvalue);

			if (strcmp(name, "request.jwt.claims") == 0)
				return text_const(cc->claims_json);
		}
	}
	return expression_tree_mutator(node, fold_claims, cc);
}

/*
 * fold claims, plan and compile an analyzed expression; claims are folded
 * again after planning, which inlines SQL functions (such as Supabase's
 * auth.uid()) that read them
 */
static ExprState *
compile_tree(Node *expr, ClaimsContext *cc)
{
	MemoryContext target = CurrentMemoryContext;
	MemoryContext scratch = AllocSetContextCreate(target, "rtsub compile",
												  ALLOCSET_DEFAULT_SIZES);
	ExprState  *state;

	/* folding and planning leave garbage: only the result is kept */
	MemoryContextSwitchTo(scratch);
	expr = fold_claims(expr, cc);
	expr = (Node *) expression_planner((Expr *) expr);
	expr = fold_claims(expr, cc);
	expr = (Node *) expression_planner((Expr *) expr);
	MemoryContextSwitchTo(target);
	expr = copyObject(expr);
	MemoryContextDelete(scratch);
	state = ExecInitExpr((Expr *) expr, NULL);
	return state;
}

/* analyze, fold claims, plan and compile one expression */
static ExprState *
compile_expression(Relation rel, const char *source, RtsubExprKind kind,
				   int nparams, char **names, Oid *types, ClaimsContext *cc)
{
	MemoryContext target = CurrentMemoryContext;
	MemoryContext scratch = AllocSetContextCreate(target, "rtsub parse",
												  ALLOCSET_DEFAULT_SIZES);
	Node	   *expr;
	ExprState  *state;

	MemoryContextSwitchTo(scratch);
	expr = rtsub_parse_row_expression(rel, source, kind, nparams, names, types);
	MemoryContextSwitchTo(target);
	state = compile_tree(copyObject(expr), cc);
	MemoryContextDelete(scratch);
	return state;
}

/* the Vars an expression uses must be columns the role may SELECT */
static bool
uses_only_permitted(Node *node, Bitmapset *permitted)
{
	List	   *vars = pull_var_clause(node, PVC_RECURSE_AGGREGATES |
									   PVC_RECURSE_WINDOWFUNCS |
									   PVC_RECURSE_PLACEHOLDERS);
	ListCell   *lc;

	foreach(lc, vars)
	{
		Var		   *v = lfirst(lc);

		if (v->varattno <= 0 || !bms_is_member(v->varattno, permitted))
			return false;
	}
	return true;
}

/* ----------------------------------------------------------------
 * Opening subscriptions
 * ----------------------------------------------------------------
 */

/* error out of opening a subscription with a protocol code */
#define OPEN_FAIL(code_, ...) \
	do { \
		code = (code_); \
		*detail = psprintf(__VA_ARGS__); \
		goto fail; \
	} while (0)

/* does the role belong to one of the roles (NULL: everyone)? */
static bool
role_in(Oid roleid, Datum roles, bool isnull)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (isnull)
		return true;
	deconstruct_array(DatumGetArrayTypeP(roles), REGROLEOID, sizeof(Oid), true,
					  TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i] && has_privs_of_role(roleid, DatumGetObjectId(elems[i])))
			return true;
	return false;
}

/* bind the client's parameters (a JSON object) to the declared types */
static const char *
bind_params(RtsubSubscription *sub, const char *params_json, int nparams,
			char **names, Oid *types, char **detail)
{
	Jsonb	   *params = NULL;
	int			i;

	if (params_json != NULL)
		params = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													CStringGetDatum(params_json)));
	if (params != NULL && JB_ROOT_COUNT(params) > nparams)
	{
		*detail = psprintf("The subscription takes %d parameter(s).", nparams);
		return "bad_params";
	}
	sub->params = makeParamList(nparams);
	for (i = 0; i < nparams; i++)
	{
		ParamExternData *prm = &sub->params->params[i];
		char	   *text = params ? claim_text(params, names[i]) : NULL;
		Oid			input;
		Oid			ioparam;
		bool		found = false;

		if (params != NULL)
		{
			JsonbValue	key;

			key.type = jbvString;
			key.val.string.val = names[i];
			key.val.string.len = strlen(names[i]);
			found = findJsonbValueFromContainer(&params->root, JB_FOBJECT, &key) != NULL;
		}
		if (!found)
		{
			*detail = psprintf("Parameter \"%s\" (%s) is missing.", names[i],
							   format_type_be(types[i]));
			return "bad_params";
		}
		prm->ptype = types[i];
		prm->pflags = PARAM_FLAG_CONST;
		prm->isnull = (text == NULL);
		if (text != NULL)
		{
			getTypeInputInfo(types[i], &input, &ioparam);
			prm->value = OidInputFunctionCall(input, text, ioparam, -1);
		}
	}
	return NULL;
}

/* build the descriptions of the columns sent to the client */
static void
build_columns(RtsubSubscription *sub, Relation rel, Bitmapset *sent,
			  RtsubFormat format)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData key;
	ColumnsEntry *entry;
	bool		found;
	int			i;

	/*
	 * Subscriptions of one table with the same columns share one
	 * description (output functions, encoded keys): the key names the
	 * table, the format and every sent column with its name and type, so a
	 * changed table gets a new entry.
	 */
	initStringInfo(&key);
	appendStringInfo(&key, "%u/%d", RelationGetRelid(rel), (int) format);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || !bms_is_member(att->attnum, sent))
			continue;
		appendStringInfo(&key, "/%d:%u:%s", att->attnum, att->atttypid,
						 NameStr(att->attname));
	}
	if (columns_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(char *);
		ctl.entrysize = sizeof(ColumnsEntry);
		ctl.hash = string_hash_ptr;
		ctl.match = string_match_ptr;
		ctl.hcxt = engine_cxt;
		columns_cache = hash_create("rtsub column descriptions", 64, &ctl,
									HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	}
	entry = hash_search(columns_cache, &key.data, HASH_FIND, &found);
	if (entry == NULL)
	{
		char	   *stored = MemoryContextStrdup(engine_cxt, key.data);
		RtsubColumn *cols = MemoryContextAllocZero(engine_cxt,
												   sizeof(RtsubColumn) * Max(desc->natts, 1));
		int			n = 0;

		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (att->attisdropped || !bms_is_member(att->attnum, sent))
				continue;
			cols[n].attnum = att->attnum;
			rtsub_column_init(&cols[n], NameStr(att->attname), att->atttypid,
							  format, engine_cxt);
			n++;
		}
		entry = hash_search(columns_cache, &stored, HASH_ENTER, &found);
		entry->cols = cols;
		entry->ncols = n;
	}
	sub->cols = entry->cols;
	sub->ncols = entry->ncols;
	pfree(key.data);
}

/*
 * Compile the table's own SELECT policies that apply to the subscription's
 * role, as PostgreSQL would apply them to that role's SELECT.  Policies
 * with subqueries cannot be evaluated in-process yet: the subscription is
 * refused rather than evaluated wrongly.
 */
static const char *
compile_native_rls(RtsubSubscription *sub, Relation rel, ClaimsContext *cc,
				   char **detail)
{
	ListCell   *lc;

	sub->has_rls = true;		/* enabled with no applicable policy: no row */
	if (rel->rd_rsdesc == NULL)
		return NULL;
	foreach(lc, rel->rd_rsdesc->policies)
	{
		RowSecurityPolicy *p = lfirst(lc);
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;
		bool		applies = false;

		if (p->polcmd != '*' && p->polcmd != ACL_SELECT_CHR)
			continue;
		deconstruct_array(p->roles, OIDOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, &nulls, &n);
		for (i = 0; i < n && !applies; i++)
			applies = DatumGetObjectId(elems[i]) == ACL_ID_PUBLIC ||
				has_privs_of_role(sub->roleid, DatumGetObjectId(elems[i]));
		if (!applies || p->qual == NULL)
			continue;
		if (p->hassublinks)
		{
			*detail = psprintf("Row-level security policy \"%s\" of table %s uses a subquery, which the rtsub server cannot evaluate per change.",
							   p->policy_name, RelationGetRelationName(rel));
			return "forbidden";
		}
		if (p->permissive)
			sub->rls_permissive = lappend(sub->rls_permissive,
										  compile_tree(copyObject((Node *) p->qual), cc));
		else
			sub->rls_restrictive = lappend(sub->rls_restrictive,
										   compile_tree(copyObject((Node *) p->qual), cc));
	}
	return NULL;
}

/* open a subscription inside the current transaction; see session.h */
static const char *
open_in_transaction(const RtsubClientIdentity *who,
					const RtsubClientMsg *msg, RtsubSubscription *sub,
					char **detail)
{
	const char *code = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	HeapTuple	tup;
	TupleDesc	tupdesc;
	bool		isnull;
	char	   *filter = NULL;
	Datum		columns_d;
	bool		columns_null;
	int			nparams = 0;
	char	  **pnames = NULL;
	Oid		   *ptypes = NULL;
	Relation	rel = NULL;
	Bitmapset  *permitted = NULL;
	Bitmapset  *sent = NULL;
	ClaimsContext cc;
	int			i;
	Oid			claim_args[1] = {TEXTOID};
	MemoryContext scratch;
	MemoryContext old;

	/*
	 * Lookups, parse trees and planner garbage go to a scratch context (the
	 * caller deletes it); what the subscription keeps is allocated in
	 * sub->cxt explicitly.  Thousands of subscriptions make this matter.
	 */
	scratch = AllocSetContextCreate(sub->cxt, "rtsub open", ALLOCSET_DEFAULT_SIZES);
	sub->open_scratch = scratch;
	MemoryContextSwitchTo(scratch);

	sub->roleid = get_role_oid(who->role, true);
	if (!OidIsValid(sub->roleid))
		OPEN_FAIL("forbidden", "Role \"%s\" does not exist.", who->role);

	/* the definition */
	args[0] = CStringGetTextDatum(msg->subscription);
	if (SPI_execute_with_args("SELECT relid, filter, columns, param_names, param_types, roles "
							  "FROM rtsub.subscription WHERE name = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.subscription");
	/* SPI leaves its own (short-lived) context current */
	MemoryContextSwitchTo(scratch);
	if (SPI_processed == 0)
		OPEN_FAIL("unknown_subscription", "No subscription is named \"%s\".",
				  msg->subscription);
	tup = SPI_tuptable->vals[0];
	tupdesc = SPI_tuptable->tupdesc;
	sub->relid = DatumGetObjectId(SPI_getbinval(tup, tupdesc, 1, &isnull));
	{
		Datum		d = SPI_getbinval(tup, tupdesc, 2, &isnull);

		if (!isnull)
			filter = TextDatumGetCString(d);
	}
	columns_d = SPI_getbinval(tup, tupdesc, 3, &columns_null);
	{
		Datum		names_d = SPI_getbinval(tup, tupdesc, 4, &isnull);
		Datum		types_d = SPI_getbinval(tup, tupdesc, 5, &isnull);
		Datum	   *elems;
		bool	   *nulls;

		deconstruct_array(DatumGetArrayTypeP(names_d), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &nulls, &nparams);
		pnames = palloc(sizeof(char *) * (nparams + 1));
		for (i = 0; i < nparams; i++)
			pnames[i] = TextDatumGetCString(elems[i]);
		deconstruct_array(DatumGetArrayTypeP(types_d), REGTYPEOID, sizeof(Oid),
						  true, TYPALIGN_INT, &elems, &nulls, &nparams);
		ptypes = palloc(sizeof(Oid) * (nparams + 1));
		for (i = 0; i < nparams; i++)
			ptypes[i] = DatumGetObjectId(elems[i]);
	}
	{
		Datum		roles_d = SPI_getbinval(tup, tupdesc, 6, &isnull);

		if (!role_in(sub->roleid, roles_d, isnull))
			OPEN_FAIL("forbidden", "Role \"%s\" may not open subscription \"%s\".",
					  who->role, msg->subscription);
	}

	/* privileges: at least the key, and what is sent */
	rel = table_open(sub->relid, AccessShareLock);
	{
		/* SELECT on the table covers every column; else column grants */
		bool		table_ok = pg_class_aclcheck(sub->relid, sub->roleid,
												 ACL_SELECT) == ACLCHECK_OK;

		for (i = 0; i < RelationGetDescr(rel)->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), i);

			if (!att->attisdropped &&
				(table_ok ||
				 pg_attribute_aclcheck(sub->relid, att->attnum, sub->roleid,
									   ACL_SELECT) == ACLCHECK_OK))
				permitted = bms_add_member(permitted, att->attnum);
		}
	}
	if (permitted == NULL)
		OPEN_FAIL("forbidden", "Role \"%s\" may not read table %s.", who->role,
				  RelationGetRelationName(rel));
	{
		Bitmapset  *key = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
		int			k = -1;

		while ((k = bms_next_member(key, k)) >= 0)
			if (!bms_is_member(k + FirstLowInvalidHeapAttributeNumber, permitted))
				OPEN_FAIL("forbidden", "Role \"%s\" may not read the primary key of table %s.",
						  who->role, RelationGetRelationName(rel));
	}
	if (columns_null)
		sent = bms_copy(permitted);
	else
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(columns_d), NAMEOID, NAMEDATALEN,
						  false, TYPALIGN_CHAR, &elems, &nulls, &n);
		for (i = 0; i < n; i++)
		{
			AttrNumber	att = get_attnum(sub->relid, NameStr(*DatumGetName(elems[i])));

			if (att > 0 && bms_is_member(att, permitted))
				sent = bms_add_member(sent, att);
		}
	}

	/* parameters and claims */
	old = MemoryContextSwitchTo(sub->cxt);
	code = bind_params(sub, msg->params_json, nparams, pnames, ptypes, detail);
	MemoryContextSwitchTo(old);
	if (code)
		goto fail;
	cc.claims_json = who->claims_json;
	cc.claims = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												   CStringGetDatum(who->claims_json)));
	cc.claim_fn = LookupFuncName(list_make2(makeString(RTSUB_SCHEMA), makeString("claim")),
								 1, claim_args, true);
	cc.claims_fn = LookupFuncName(list_make2(makeString(RTSUB_SCHEMA), makeString("claims")),
								  0, claim_args, true);

	/* the filter, which may only read what the role may read */
	if (filter != NULL)
	{
		Node	   *expr = rtsub_parse_row_expression(rel, filter, RTSUB_EXPR_FILTER,
													  nparams, pnames, ptypes);

		if (!uses_only_permitted(expr, permitted))
			OPEN_FAIL("forbidden", "The filter of \"%s\" reads columns role \"%s\" may not read.",
					  msg->subscription, who->role);
		old = MemoryContextSwitchTo(sub->cxt);
		sub->filter = compile_expression(rel, filter, RTSUB_EXPR_FILTER,
										 nparams, pnames, ptypes, &cc);
		MemoryContextSwitchTo(old);
	}

	/* the policies that apply to the role */
	args[0] = ObjectIdGetDatum(sub->relid);
	argtypes[0] = OIDOID;
	if (SPI_execute_with_args("SELECT using_expr, roles, permissive FROM rtsub.policy "
							  "WHERE relid = $1 ORDER BY name",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.policy");
	MemoryContextSwitchTo(scratch);
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	ptup = SPI_tuptable->vals[i];
		TupleDesc	pdesc = SPI_tuptable->tupdesc;
		char	   *using_expr = TextDatumGetCString(SPI_getbinval(ptup, pdesc, 1, &isnull));
		Datum		roles = SPI_getbinval(ptup, pdesc, 2, &isnull);
		bool		permissive;
		ExprState  *state;

		if (!role_in(sub->roleid, roles, isnull))
			continue;
		permissive = DatumGetBool(SPI_getbinval(ptup, pdesc, 3, &isnull));
		old = MemoryContextSwitchTo(sub->cxt);
		state = compile_expression(rel, using_expr, RTSUB_EXPR_POLICY, 0,
								   NULL, NULL, &cc);
		sub->has_policies = true;
		if (permissive)
			sub->permissive = lappend(sub->permissive, state);
		else
			sub->restrictive = lappend(sub->restrictive, state);
		MemoryContextSwitchTo(old);
	}

	/* the table's own row-level security, when published with native_rls */
	argtypes[0] = OIDOID;
	args[0] = ObjectIdGetDatum(sub->relid);
	if (SPI_execute_with_args("SELECT native_rls FROM rtsub.publication WHERE relid = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.publication");
	MemoryContextSwitchTo(scratch);
	if (SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) &&
		check_enable_rls(sub->relid, sub->roleid, true) == RLS_ENABLED)
	{
		old = MemoryContextSwitchTo(sub->cxt);
		code = compile_native_rls(sub, rel, &cc, detail);
		MemoryContextSwitchTo(old);
		if (code)
			goto fail;
	}

	old = MemoryContextSwitchTo(sub->cxt);
	build_columns(sub, rel, sent, sub->format);
	MemoryContextSwitchTo(old);
	sub->relname = MemoryContextStrdup(sub->cxt, RelationGetRelationName(rel));
	{
		TupleDesc	desc = RelationGetDescr(rel);

		sub->natts = desc->natts;
		sub->atttypes = MemoryContextAlloc(sub->cxt, sizeof(Oid) * Max(desc->natts, 1));
		for (i = 0; i < desc->natts; i++)
			sub->atttypes[i] = TupleDescAttr(desc, i)->attisdropped ? InvalidOid :
				TupleDescAttr(desc, i)->atttypid;
	}
	table_close(rel, AccessShareLock);
	return NULL;

fail:
	if (rel != NULL)
		table_close(rel, AccessShareLock);
	return code;
}

/* add a subscription to the registry of its table */
static void
register_sub(RtsubSubscription *sub)
{
	bool		found;
	RelSubs    *rs = hash_search(subs_by_rel, &sub->relid, HASH_ENTER, &found);
	MemoryContext old = MemoryContextSwitchTo(engine_cxt);

	if (!found)
		rs->subs = NIL;
	rs->subs = lappend(rs->subs, sub);
	if (sub->state != SUB_LIVE)
		pending = lappend(pending, sub);
	MemoryContextSwitchTo(old);
	nsubs++;
}

/* send the subscription's waiting batch as one `changes` message */
static void
flush_batch(RtsubSubscription *sub)
{
	StringInfoData msg;
	RtsubWriter w;

	if (sub->nbatch == 0)
		return;
	initStringInfo(&msg);
	rtsub_writer_init(&w, &msg, sub->format);
	w.enc->map_begin(&w, 3);
	rtsub_put_kv_str(&w, "type", "changes");
	rtsub_put_kv_str(&w, "id", sub->client_id);
	w.enc->key(&w, "events", 6);
	w.enc->array_begin(&w, sub->nbatch);
	appendBinaryStringInfo(&msg, sub->batch.data, sub->batch.len);
	w.enc->array_end(&w);
	w.enc->map_end(&w);
	rtsub_session_event_time(sub->batch_commit_time);
	rtsub_session_send_priority(sub->session, msg.data, msg.len, sub->priority);
	rtsub_session_event_time(0);
	pfree(msg.data);
	resetStringInfo(&sub->batch);
	sub->nbatch = 0;
	batching = list_delete_ptr(batching, sub);
}

/*
 * queue a built message for the subscription's client (after its waiting
 * batch, so that the client sees everything in order)
 */
static void
sub_send(RtsubSubscription *sub, StringInfo buf)
{
	flush_batch(sub);
	rtsub_session_send_priority(sub->session, buf->data, buf->len, sub->priority);
	pfree(buf->data);
}

/* send `subscribed` */
static void
send_subscribed(RtsubSubscription *sub, RtsubPos at, bool snapshot, bool resumed)
{
	StringInfoData buf;
	char		text[RTSUB_POS_TEXT_LEN];

	rtsub_pos_format(at, text);
	initStringInfo(&buf);
	rtsub_msg_subscribed(&buf, sub->format, sub->client_id, text,
						 rtsub_window_epoch(), snapshot, resumed);
	sub_send(sub, &buf);
}

/* send `reset` for a client's subscription id */
static void
send_reset(RtsubSession *session, RtsubFormat format, const char *id,
		   const char *reason)
{
	StringInfoData buf;

	initStringInfo(&buf);
	rtsub_msg_reset(&buf, format, id, reason);
	rtsub_session_send(session, buf.data, buf.len);
	pfree(buf.data);
	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->resets_sent, 1);
}

/*
 * End a subscription the server cannot keep exact: the client gets
 * `reset` (with reason, if given); the session forgets it at the end of
 * the engine's step (rtsub_engine_step).
 */
static void
end_sub(RtsubSubscription *sub, const char *reason)
{
	MemoryContext old;

	if (sub->ended)
		return;
	if (reason != NULL)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		rtsub_msg_reset(&buf, sub->format, sub->client_id, reason);
		sub_send(sub, &buf);
		if (rtsub_shared)
			pg_atomic_fetch_add_u64(&rtsub_shared->resets_sent, 1);
	}
	sub->ended = true;
	if (sub->reader)
	{
		rtsub_snapshot_stop(sub->reader);
		sub->reader = NULL;
	}
	old = MemoryContextSwitchTo(engine_cxt);
	ended = lappend(ended, sub);
	MemoryContextSwitchTo(old);
}

/* see session.h */
const char *
rtsub_subscription_open(RtsubSession *session, const RtsubClientIdentity *who,
						const RtsubClientMsg *msg, RtsubSubscription **subp,
						char **detail)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext cxt;
	RtsubSubscription *volatile sub;
	const char *volatile code = NULL;
	RtsubFormat format = rtsub_session_format(session);

	ensure_registry();
	/* small blocks: thousands of these live for hours, each a few kB */
	cxt = AllocSetContextCreate(engine_cxt, "rtsub subscription",
								0, 1024, 1024);
	sub = MemoryContextAllocZero(cxt, sizeof(RtsubSubscription));
	sub->cxt = cxt;
	sub->session = session;
	sub->format = format;
	if (!rtsub_window_is_open() && (msg->snapshot || msg->resume_after != NULL))
		rtsub_worker_open_stream_now();

	/* a resume that cannot be honoured needs no compiling */
	if (msg->resume_after != NULL)
	{
		RtsubPos	after;
		const char *reason = NULL;

		if (!rtsub_pos_parse(msg->resume_after, &after))
		{
			MemoryContextDelete(cxt);
			*detail = psprintf("resume.after \"%s\" is not an event id", msg->resume_after);
			return RTSUB_ERR_BAD_FIELD;
		}
		if (!rtsub_window_is_open() || msg->resume_epoch == NULL ||
			strcmp(msg->resume_epoch, rtsub_window_epoch()) != 0)
			reason = "epoch_changed";
		else if (rtsub_pos_cmp(after, rtsub_window_start()) < 0)
			reason = "beyond_window";
		if (reason == NULL)
		{
			sub->state = SUB_CATCHUP;
			sub->cursor = after;
		}
		else
		{
			send_reset(session, format, msg->id, reason);
			if (!msg->snapshot)
			{
				MemoryContextDelete(cxt);
				return RTSUB_OPEN_RESET;
			}
		}
	}

	PG_TRY();
	{
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		MemoryContextSwitchTo(cxt);
		sub->client_id = pstrdup(msg->id);
		sub->name = pstrdup(msg->subscription);
		sub->include_metadata = msg->include_metadata;
		sub->priority = msg->priority;
		sub->batch_size = msg->batch_size;
		sub->throttle_ms = msg->throttle_ms;
		if (sub->batch_size > 1)
			initStringInfo(&sub->batch);
		code = open_in_transaction(who, msg, sub, detail);
		if (code != NULL)
			*detail = MemoryContextStrdup(callercxt, *detail);
		MemoryContextSwitchTo(cxt);
		if (sub->open_scratch)
			MemoryContextDelete(sub->open_scratch);
		sub->open_scratch = NULL;
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(callercxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		code = (edata->sqlerrcode == ERRCODE_INVALID_TEXT_REPRESENTATION ||
				edata->sqlerrcode == ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE ||
				edata->sqlerrcode == ERRCODE_INVALID_DATETIME_FORMAT ||
				edata->sqlerrcode == ERRCODE_DATETIME_VALUE_OUT_OF_RANGE) ?
			"bad_params" : "internal";
		*detail = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);

	if (code != NULL)
	{
		MemoryContextDelete(cxt);
		return code;
	}

	if (sub->state == SUB_CATCHUP)
	{
		/* resumed: the window has everything after the client's event */
		register_sub(sub);
		send_subscribed(sub, sub->cursor, false, true);
	}
	else if (msg->snapshot)
	{
		RtsubSnapshotRequest req;

		if (!rtsub_window_is_open())
		{
			MemoryContextDelete(cxt);
			*detail = pstrdup("The server's change stream is not running (is the rtsub extension installed in rtsub.database?).");
			return "internal";
		}
		req.format = format;
		req.chunk_rows = msg->chunk_rows;
		req.chunk_bytes = Min(msg->chunk_bytes, Max(rtsub_max_send_buffer / 4, 1024));
		req.include_metadata = msg->include_metadata;
		req.id = msg->id;
		req.subscription = msg->subscription;
		req.params_json = msg->params_json;
		req.role = who->role;
		req.claims_json = who->claims_json;
		sub->state = SUB_SNAPSHOT;
		sub->awaiting_horizon = true;
		sub->cursor = rtsub_window_start();
		sub->reader = rtsub_snapshot_request(sub, &req);
		register_sub(sub);
		send_subscribed(sub, rtsub_window_head(), true, false);
	}
	else
	{
		sub->state = SUB_LIVE;
		sub->cursor = rtsub_window_head();
		register_sub(sub);
		send_subscribed(sub, sub->cursor, false, false);
	}
	*subp = sub;
	return NULL;
}

/* see session.h */
void
rtsub_subscription_close(RtsubSubscription *sub)
{
	RelSubs    *rs;

	if (sub == NULL || subs_by_rel == NULL)
		return;
	rs = hash_search(subs_by_rel, &sub->relid, HASH_FIND, NULL);
	if (rs != NULL)
	{
		rs->subs = list_delete_ptr(rs->subs, sub);
		if (rs->subs == NIL)
			hash_search(subs_by_rel, &sub->relid, HASH_REMOVE, NULL);
	}
	pending = list_delete_ptr(pending, sub);
	ended = list_delete_ptr(ended, sub);
	batching = list_delete_ptr(batching, sub);
	if (sub->reader)
		rtsub_snapshot_stop(sub->reader);
	nsubs--;
	MemoryContextDelete(sub->cxt);
}

/* ----------------------------------------------------------------
 * Evaluating changes
 * ----------------------------------------------------------------
 */

/*
 * PostgreSQL's policy rule: at least one permissive policy and every
 * restrictive one must pass (NULL counts as false)
 */
static bool
policies_pass(List *permissive, List *restrictive, ExprContext *econtext)
{
	bool		isnull;
	bool		any = false;
	ListCell   *lc;

	foreach(lc, permissive)
	{
		Datum		d = ExecEvalExprSwitchContext(lfirst(lc), econtext, &isnull);

		if (!isnull && DatumGetBool(d))
		{
			any = true;
			break;
		}
	}
	if (!any)
		return false;
	foreach(lc, restrictive)
	{
		Datum		d = ExecEvalExprSwitchContext(lfirst(lc), econtext, &isnull);

		if (isnull || !DatumGetBool(d))
			return false;
	}
	return true;
}

/* is the row in the slot visible to the subscription? */
static bool
row_visible(RtsubSubscription *sub, ExprContext *econtext)
{
	econtext->ecxt_param_list_info = sub->params;
	if (sub->filter != NULL &&
		!ExecQual(sub->filter, econtext))
		return false;
	if (sub->has_policies &&
		!policies_pass(sub->permissive, sub->restrictive, econtext))
		return false;
	if (sub->has_rls &&
		!policies_pass(sub->rls_permissive, sub->rls_restrictive, econtext))
		return false;
	return true;
}

/* write the sent columns of a row (all of them, or the key only) */
static void
write_row(RtsubSubscription *sub, RtsubWriter *w, TupleTableSlot *slot)
{
	int			i;
	int			n = 0;

	slot_getallattrs(slot);
	for (i = 0; i < sub->ncols; i++)
		if (sub->cols[i].attnum <= slot->tts_tupleDescriptor->natts &&
			!TupleDescAttr(slot->tts_tupleDescriptor, sub->cols[i].attnum - 1)->attisdropped)
			n++;
	w->enc->map_begin(w, n);
	for (i = 0; i < sub->ncols; i++)
	{
		RtsubColumn *col = &sub->cols[i];
		int			att = col->attnum - 1;

		if (col->attnum > slot->tts_tupleDescriptor->natts ||
			TupleDescAttr(slot->tts_tupleDescriptor, att)->attisdropped)
			continue;
		rtsub_column_key(w, col);
		if (slot->tts_isnull[att])
			w->enc->null(w);
		else
			w->enc->value(w, col, slot->tts_values[att]);
	}
	w->enc->map_end(w);
}


/*
 * send one change event to the subscription's client; one over
 * rtsub.max_change_size is reported (change_too_large) and ends the
 * subscription with a reset, never dropped silently
 */
/*
 * The encoded pairs of a change event (event, op, ts, row, old, table,
 * xid) are the same for every subscriber with the same format, columns and
 * options: they are encoded once per change and shape, and each
 * subscriber's message only adds its type and id.
 */
#define BODY_CACHE_SIZE 8

typedef struct BodyShape
{
	RtsubFormat format;
	bool		include_metadata;
	const char *op;
	TupleTableSlot *row;
	TupleTableSlot *old;
	int			ncols;
	RtsubColumn *cols;
	StringInfoData pairs;		/* the encoded pairs, a fragment */
	int			npairs;
} BodyShape;

static RtsubPos body_pos;
static const RtsubChange *body_change = NULL;
static BodyShape body_shapes[BODY_CACHE_SIZE];
static int	nbody_shapes = 0;
static int	next_body_shape = 0;

/* same columns (and so the same keys and value encodings)? */
static bool
same_columns(const RtsubColumn *a, int na, const RtsubColumn *b, int nb)
{
	if (a == b)
		return na == nb;
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++)
		if (a[i].attnum != b[i].attnum || a[i].kind != b[i].kind)
			return false;
	return true;
}

/* the encoded pairs of a change event for a subscription (cached) */
static BodyShape *
change_body(RtsubSubscription *sub, const RtsubChange *c, const char *op,
			TupleTableSlot *row, TupleTableSlot *old)
{
	BodyShape  *b;
	RtsubWriter w;
	char		event[RTSUB_POS_TEXT_LEN];
	MemoryContext oldcxt;

	if (body_change != c || rtsub_pos_cmp(body_pos, rtsub_change_pos(c)) != 0)
	{
		body_change = c;
		body_pos = rtsub_change_pos(c);
		nbody_shapes = 0;
		next_body_shape = 0;
	}
	for (int i = 0; i < nbody_shapes; i++)
	{
		b = &body_shapes[i];
		if (b->format == sub->format && b->include_metadata == sub->include_metadata &&
			b->op == op && b->row == row && b->old == old &&
			same_columns(b->cols, b->ncols, sub->cols, sub->ncols))
			return b;
	}

	/* a new shape (the oldest is replaced when the cache is full) */
	b = &body_shapes[next_body_shape];
	next_body_shape = (next_body_shape + 1) % BODY_CACHE_SIZE;
	if (nbody_shapes < BODY_CACHE_SIZE)
		nbody_shapes++;
	oldcxt = MemoryContextSwitchTo(engine_cxt);
	if (b->pairs.data == NULL)
		initStringInfo(&b->pairs);
	MemoryContextSwitchTo(oldcxt);
	b->format = sub->format;
	b->include_metadata = sub->include_metadata;
	b->op = op;
	b->row = row;
	b->old = old;
	b->cols = sub->cols;
	b->ncols = sub->ncols;
	b->npairs = 4 + (old != NULL ? 1 : 0) + (sub->include_metadata ? 2 : 0);

	rtsub_fragment_begin(&w, &b->pairs, sub->format);
	rtsub_pos_format(body_pos, event);
	rtsub_put_kv_str(&w, "event", event);
	rtsub_put_kv_str(&w, "op", op);
	w.enc->key(&w, "ts", 2);
	w.enc->instant(&w, c->commit_time);
	w.enc->key(&w, "row", 3);
	write_row(sub, &w, row);
	if (old != NULL)
	{
		w.enc->key(&w, "old", 3);
		write_row(sub, &w, old);
	}
	if (sub->include_metadata)
	{
		char	   *table = psprintf("%s.%s", c->schema, c->table);

		rtsub_put_kv_str(&w, "table", table);
		w.enc->key(&w, "xid", 3);
		w.enc->int64(&w, c->xid);
		pfree(table);
	}
	return b;
}

static void
send_change(RtsubSubscription *sub, const RtsubChange *c, const char *op,
			TupleTableSlot *row, TupleTableSlot *old)
{
	StringInfoData buf;
	RtsubWriter w;
	char		event[RTSUB_POS_TEXT_LEN];
	bool		batched = sub->batch_size > 1;
	BodyShape  *body = change_body(sub, c, op, row, old);

	initStringInfo(&buf);
	enlargeStringInfo(&buf, body->pairs.len + 64 + strlen(sub->client_id));
	rtsub_writer_init(&w, &buf, sub->format);
	rtsub_pos_format(rtsub_change_pos(c), event);
	w.enc->map_begin(&w, body->npairs + (batched ? 0 : 2));
	if (!batched)
	{
		rtsub_put_kv_str(&w, "type", "change");
		rtsub_put_kv_str(&w, "id", sub->client_id);
	}
	w.enc->fragment(&w, body->pairs.data, body->pairs.len);
	w.enc->map_end(&w);
	if (buf.len > rtsub_max_change_size)
	{
		StringInfoData err;

		initStringInfo(&err);
		rtsub_msg_error(&err, sub->format, "change_too_large",
						psprintf("change %s is %d bytes, over rtsub.max_change_size (%d bytes)",
								 event, buf.len, rtsub_max_change_size),
						sub->client_id);
		sub_send(sub, &err);
		pfree(buf.data);
		ereport(LOG,
				(errmsg("rtsub: change %s of subscription \"%s\" not sent: %d bytes, over rtsub.max_change_size",
						event, sub->name, buf.len)));
		end_sub(sub, "change_too_large");
		return;
	}
	sub->messages_sent++;
	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->changes_delivered, 1);
	if (!batched)
	{
		rtsub_session_event_time(c->commit_time);
		sub_send(sub, &buf);
		rtsub_session_event_time(0);
		return;
	}

	/* batching: the body waits for its companions (or its deadline) */
	if (sub->nbatch > 0 && sub->format == RTSUB_FORMAT_JSON)
		appendStringInfoChar(&sub->batch, ',');
	appendBinaryStringInfo(&sub->batch, buf.data, buf.len);
	pfree(buf.data);
	if (sub->nbatch++ == 0)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(engine_cxt);

		sub->batch_commit_time = c->commit_time;
		sub->batch_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  sub->throttle_ms);
		batching = lappend(batching, sub);
		MemoryContextSwitchTo(oldcxt);
	}
	if (sub->nbatch >= sub->batch_size)
		flush_batch(sub);
}

/* evaluate one change for one subscription and send what it should see */
static void
evaluate_one(RtsubSubscription *sub, const RtsubChange *c,
			 TupleTableSlot *newslot, TupleTableSlot *oldslot,
			 ExprContext *econtext)
{
	bool		new_vis = false;
	bool		old_vis = false;
	bool		old_known;
	bool		unfiltered = (sub->filter == NULL && !sub->has_policies &&
							  !sub->has_rls);

	if (c->newtup != NULL)
	{
		econtext->ecxt_scantuple = newslot;
		new_vis = row_visible(sub, econtext);
		ResetExprContext(econtext);
	}
	old_known = (c->oldtup != NULL && c->old_is_full);
	if (old_known)
	{
		econtext->ecxt_scantuple = oldslot;
		old_vis = row_visible(sub, econtext);
		ResetExprContext(econtext);
	}

	switch (c->op)
	{
		case 'I':
			if (new_vis)
				send_change(sub, c, "insert", newslot, NULL);
			break;
		case 'U':
			if (!old_known)
				old_vis = unfiltered || new_vis;	/* best known */
			if (new_vis && old_vis)
				send_change(sub, c, "update", newslot, old_known ? oldslot : NULL);
			else if (new_vis)
				send_change(sub, c, "insert", newslot, NULL);	/* moved in */
			else if (old_vis && old_known)
				send_change(sub, c, "delete", oldslot, NULL);	/* moved out */
			break;
		case 'D':
			if (!old_known)
				old_vis = unfiltered && c->oldtup != NULL;
			if (old_vis)
				send_change(sub, c, "delete", oldslot, NULL);
			break;
		default:
			break;
	}
}


/* did the snapshot with this horizon see (the commit of) xid? */
static bool
horizon_saw(const RtsubSnapshotHorizon *h, TransactionId xid)
{
	uint32		lo = 0;
	uint32		hi = h->xcnt;

	if (TransactionIdPrecedes(xid, h->xmin))
		return true;
	if (!TransactionIdPrecedes(xid, h->xmax))
		return false;
	while (lo < hi)
	{
		uint32		mid = (lo + hi) / 2;

		if (h->xip[mid] == xid)
			return false;		/* running when the snapshot was taken */
		if (h->xip[mid] < xid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return true;
}

/*
 * Can the subscription's compiled expressions read tuples of this
 * descriptor?  Every column it knew must still have its type (a table
 * whose columns changed since is reset).
 */
static bool
desc_compatible(RtsubSubscription *sub, TupleDesc desc)
{
	int			i;

	if (desc == sub->checked_desc)
		return true;
	if (desc->natts < sub->natts)
		return false;
	for (i = 0; i < sub->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (OidIsValid(sub->atttypes[i]) &&
			(att->attisdropped || att->atttypid != sub->atttypes[i]))
			return false;
	}
	sub->checked_desc = desc;
	return true;
}

/*
 * Evaluate one change for one subscription.  An ERROR stops only that
 * subscription, whose client is told so; the transaction is started
 * afresh (*econtextp replaced).
 */
static void
evaluate_guarded(RtsubSubscription *sub, const RtsubChange *c,
				 TupleTableSlot *newslot, TupleTableSlot *oldslot,
				 ExprContext **econtextp, MemoryContext cxt)
{
	if (sub->horizon != NULL && horizon_saw(sub->horizon, c->xid))
		return;					/* in the snapshot already */
	if (!desc_compatible(sub, c->desc))
	{
		end_sub(sub, "schema_changed");
		return;
	}
	nevaluated++;
	PG_TRY();
	{
		evaluate_one(sub, c, newslot, oldslot, *econtextp);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		StringInfoData buf;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		sub->failed = true;
		initStringInfo(&buf);
		rtsub_msg_error(&buf, sub->format, "internal", edata->message, sub->client_id);
		sub_send(sub, &buf);
		ereport(LOG,
				(errmsg("rtsub: subscription \"%s\" stopped: %s",
						sub->name, edata->message)));
		FreeErrorData(edata);
		/* the transaction may be in any state: start afresh */
		AbortCurrentTransaction();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		*econtextp = CreateStandaloneExprContext();
		MemoryContextSwitchTo(cxt);
	}
	PG_END_TRY();
}

/* slots holding a change's rows (NULL where it has none) */
static void
change_slots(const RtsubChange *c, TupleTableSlot **newslot, TupleTableSlot **oldslot)
{
	*newslot = *oldslot = NULL;
	if (c->newtup)
	{
		*newslot = MakeSingleTupleTableSlot(c->desc, &TTSOpsHeapTuple);
		ExecStoreHeapTuple(c->newtup, *newslot, false);
	}
	if (c->oldtup)
	{
		*oldslot = MakeSingleTupleTableSlot(c->desc, &TTSOpsHeapTuple);
		ExecStoreHeapTuple(c->oldtup, *oldslot, false);
	}
}

/* drop what change_slots made */
static void
drop_slots(TupleTableSlot *newslot, TupleTableSlot *oldslot)
{
	if (newslot)
		ExecDropSingleTupleTableSlot(newslot);
	if (oldslot)
		ExecDropSingleTupleTableSlot(oldslot);
}

/* is this a change subscriptions evaluate (a row change)? */
static inline bool
is_row_change(const RtsubChange *c)
{
	return c->op == 'I' || c->op == 'U' || c->op == 'D';
}

/*
 * Evaluate a segment just added to the window for the live subscriptions
 * of each change's table.  Subscriptions that are not live catch up from
 * the window instead (rtsub_engine_step).
 */
void
rtsub_evaluate_segment(RtsubSegment *seg)
{
	ExprContext *econtext;
	MemoryContext cxt = CurrentMemoryContext;
	int			i;

	if (seg == NULL || subs_by_rel == NULL || nsubs == 0)
		return;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	econtext = CreateStandaloneExprContext();

	for (i = 0; i < seg->nchanges; i++)
	{
		RtsubChange *c = seg->changes[i];
		RtsubPos	pos = rtsub_change_pos(c);
		RelSubs    *rs;
		TupleTableSlot *newslot = NULL;
		TupleTableSlot *oldslot = NULL;
		ListCell   *sc;

		if (!is_row_change(c))
			continue;
		rs = hash_search(subs_by_rel, &c->relid, HASH_FIND, NULL);
		if (rs == NULL)
			continue;

		MemoryContextSwitchTo(cxt);
		foreach(sc, rs->subs)
		{
			RtsubSubscription *sub = lfirst(sc);

			if (sub->state != SUB_LIVE || sub->failed || sub->ended ||
				rtsub_pos_cmp(pos, sub->cursor) <= 0)
				continue;
			if (newslot == NULL && oldslot == NULL)
				change_slots(c, &newslot, &oldslot);
			evaluate_guarded(sub, c, newslot, oldslot, &econtext, cxt);
		}
		drop_slots(newslot, oldslot);
	}

	FreeExprContext(econtext, true);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	(void) flush_due_batches(GetCurrentTimestamp());
	flush_counts();
}

/*
 * send the batches whose time has come (all with throttleMs 0: a batch
 * never outlives the decoded batch it came from); returns the time until
 * the next one is due, in ms (-1: none waits)
 */
static long
flush_due_batches(TimestampTz now)
{
	ListCell   *lc;
	long		next = -1;

	foreach(lc, batching)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (sub->nbatch > 0 && now < sub->batch_deadline)
		{
			long		ms = TimestampDifferenceMilliseconds(now, sub->batch_deadline);

			next = (next < 0) ? ms : Min(next, ms);
		}
	}
	foreach(lc, batching)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (sub->nbatch > 0 && now >= sub->batch_deadline)
		{
			/* flush_batch deletes sub from batching: restart the scan */
			flush_batch(sub);
			return flush_due_batches(now);
		}
	}
	return next;
}

/* the wait before the next batch is due, at most max_ms */
long
rtsub_engine_wait_ms(long max_ms)
{
	long		next = flush_due_batches(GetCurrentTimestamp());

	return next < 0 ? max_ms : Min(next, max_ms);
}

/* send `live`: everything up to the window's head has been sent */
static void
send_live(RtsubSubscription *sub)
{
	StringInfoData buf;
	char		at[RTSUB_POS_TEXT_LEN];

	rtsub_pos_format(rtsub_window_head(), at);
	initStringInfo(&buf);
	rtsub_msg_live(&buf, sub->format, sub->client_id, at, rtsub_window_epoch());
	sub_send(sub, &buf);
}

/* a subscription reached the window's head: it is live from now on */
static void
became_live(RtsubSubscription *sub, XLogRecPtr read_upto)
{
	RtsubPos	head = rtsub_window_head();

	sub->state = SUB_LIVE;
	if (rtsub_pos_cmp(head, sub->cursor) > 0)
		sub->cursor = head;
	if (sub->horizon != NULL && read_upto < sub->horizon->wal_insert)
	{
		sub->live_pending = true;	/* changes the snapshot saw may come */
		return;
	}
	if (sub->horizon != NULL)
	{
		pfree(sub->horizon);
		sub->horizon = NULL;
	}
	sub->live_pending = false;
	send_live(sub);
}

/* the most a catching-up subscription may have queued at its client */
static size_t
catch_up_queue_limit(void)
{
	return Max(rtsub_max_send_buffer / 4, 64 * 1024);
}

/*
 * Let one subscription catch up from the window, by at most *budget
 * changes and as long as its client's queue is short.  True if it has more
 * to do and could go on now.
 */
static bool
catch_up_one(RtsubSubscription *sub, int *budget, XLogRecPtr read_upto,
			 ExprContext **econtextp, MemoryContext cxt)
{
	int			nseg = rtsub_window_nsegments();
	int			i;

	for (i = rtsub_window_find(sub->cursor); i < nseg; i++)
	{
		RtsubSegment *seg = rtsub_window_segment(i);
		int			j = 0;

		if (rtsub_pos_cmp(seg->first, sub->cursor) <= 0)
		{
			int			lo = 0,
						hi = seg->nchanges;

			while (lo < hi)
			{
				int			mid = (lo + hi) / 2;

				if (rtsub_pos_cmp(rtsub_change_pos(seg->changes[mid]), sub->cursor) > 0)
					hi = mid;
				else
					lo = mid + 1;
			}
			j = lo;
		}
		for (; j < seg->nchanges; j++)
		{
			RtsubChange *c = seg->changes[j];

			if (*budget <= 0)
				return true;
			if (rtsub_session_queued(sub->session) > catch_up_queue_limit())
				return false;	/* its socket's writability wakes us */
			(*budget)--;
			sub->cursor = rtsub_change_pos(c);
			if (c->relid != sub->relid || !is_row_change(c))
				continue;
			{
				TupleTableSlot *newslot;
				TupleTableSlot *oldslot;

				MemoryContextSwitchTo(cxt);
				change_slots(c, &newslot, &oldslot);
				evaluate_guarded(sub, c, newslot, oldslot, econtextp, cxt);
				drop_slots(newslot, oldslot);
			}
			if (sub->ended || sub->failed)
				return false;
		}
	}
	became_live(sub, read_upto);
	return false;
}

/* ----------------------------------------------------------------
 * Snapshots (the server worker's side; see snapshot.c)
 * ----------------------------------------------------------------
 */

/* see snapshot.h: the snapshot's horizon is known */
void
rtsub_snapshot_on_horizon(RtsubSubscription *sub, const RtsubSnapshotHorizon *h,
						  size_t len)
{
	int			nseg = rtsub_window_nsegments();
	int			i;

	if (sub->ended || len < offsetof(RtsubSnapshotHorizon, xip) ||
		len != offsetof(RtsubSnapshotHorizon, xip) + sizeof(TransactionId) * h->xcnt)
	{
		end_sub(sub, "snapshot_failed");
		return;
	}
	sub->horizon = MemoryContextAlloc(sub->cxt, len);
	memcpy(sub->horizon, h, len);
	sub->awaiting_horizon = false;

	/*
	 * Changes in the window the snapshot saw need no catching up: start
	 * after the longest prefix of them (normally the whole window).
	 */
	for (i = rtsub_window_find(sub->cursor); i < nseg; i++)
	{
		RtsubSegment *seg = rtsub_window_segment(i);
		int			j;

		for (j = 0; j < seg->nchanges; j++)
		{
			RtsubChange *c = seg->changes[j];

			if (rtsub_pos_cmp(rtsub_change_pos(c), sub->cursor) <= 0)
				continue;
			if (!horizon_saw(sub->horizon, c->xid))
				return;
			sub->cursor = rtsub_change_pos(c);
		}
	}
}

/* see snapshot.h: forward a chunk */
void
rtsub_snapshot_on_chunk(RtsubSubscription *sub, const char *data, size_t len)
{
	if (!sub->ended)
		rtsub_session_send_priority(sub->session, data, len, sub->priority);
}

/* see snapshot.h: the snapshot is complete; catch up */
void
rtsub_snapshot_on_done(RtsubSubscription *sub)
{
	if (sub->reader)
	{
		rtsub_snapshot_stop(sub->reader);
		sub->reader = NULL;
	}
	if (sub->ended)
		return;
	if (sub->awaiting_horizon)
	{
		end_sub(sub, "snapshot_failed");
		return;
	}
	sub->state = SUB_CATCHUP;
}

/* see snapshot.h: the snapshot failed; the client is told and reset */
void
rtsub_snapshot_on_failed(RtsubSubscription *sub, const char *code,
						 const char *message)
{
	StringInfoData buf;

	if (sub->reader)
	{
		rtsub_snapshot_stop(sub->reader);
		sub->reader = NULL;
	}
	if (sub->ended)
		return;
	ereport(LOG,
			(errmsg("rtsub: snapshot of subscription \"%s\" failed: %s", sub->name, message)));
	initStringInfo(&buf);
	rtsub_msg_error(&buf, sub->format, code, message, sub->client_id);
	sub_send(sub, &buf);
	end_sub(sub, "snapshot_failed");
}

/* see snapshot.h: may a chunk be forwarded to the client now? */
bool
rtsub_snapshot_may_send(RtsubSubscription *sub)
{
	return !sub->ended &&
		rtsub_session_queued(sub->session) < (size_t) Max(rtsub_max_send_buffer / 2, 64 * 1024);
}

/* ----------------------------------------------------------------
 * The engine's step
 * ----------------------------------------------------------------
 */

#define CATCH_UP_BUDGET 20000

/*
 * Everything but live evaluation, once per iteration of the server's loop:
 * trim the window (resetting subscriptions it leaves behind), forward
 * snapshot chunks, let subscriptions catch up, send `live` where due, and
 * hand ended subscriptions back to their sessions.  True if there is more
 * to do right away (the caller should not sleep).
 */
bool
rtsub_engine_step(XLogRecPtr read_upto, TimestampTz now)
{
	bool		more = false;
	bool		holding = false;
	RtsubPos	hold = {0, 0};
	RtsubPos	start;
	ListCell   *lc;
	List	   *catching = NIL;

	ensure_registry();

	/* the window, held for subscriptions whose snapshot horizon is unknown */
	foreach(lc, pending)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (!sub->ended && sub->awaiting_horizon &&
			(!holding || rtsub_pos_cmp(sub->cursor, hold) < 0))
		{
			hold = sub->cursor;
			holding = true;
		}
	}
	if (rtsub_window_is_open())
		rtsub_window_trim(now, holding ? &hold : NULL);
	start = rtsub_window_start();
	foreach(lc, pending)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (!sub->ended && !sub->awaiting_horizon && sub->state != SUB_LIVE &&
			rtsub_pos_cmp(sub->cursor, start) < 0)
			end_sub(sub, "beyond_window");
	}

	if (rtsub_snapshots_poll())
		more = true;

	foreach(lc, pending)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (!sub->ended && sub->state == SUB_CATCHUP)
			catching = lappend(catching, sub);
	}
	if (catching != NIL)
	{
		MemoryContext cxt = CurrentMemoryContext;
		ExprContext *econtext;
		int			budget = CATCH_UP_BUDGET;

		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		econtext = CreateStandaloneExprContext();
		foreach(lc, catching)
		{
			RtsubSubscription *sub = lfirst(lc);
			int			share = Max(budget / Max(list_length(catching), 1), 1000);

			if (catch_up_one(sub, &share, read_upto, &econtext, cxt))
				more = true;
		}
		FreeExprContext(econtext, true);
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
	}

	/* live subscriptions waiting for their snapshot's horizon to pass */
	foreach(lc, pending)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (!sub->ended && sub->state == SUB_LIVE && sub->live_pending)
			became_live(sub, read_upto);
	}
	foreach(lc, pending)
	{
		RtsubSubscription *sub = lfirst(lc);

		if (sub->state == SUB_LIVE && !sub->live_pending)
			pending = foreach_delete_current(pending, lc);
	}

	/* hand ended subscriptions back (which closes them) */
	while (ended != NIL)
	{
		RtsubSubscription *sub = linitial(ended);

		ended = list_delete_first(ended);
		rtsub_session_subscription_ended(sub->session, sub);
	}
	(void) flush_due_batches(now);
	flush_counts();
	return more;
}

/* end every subscription (the stream was lost: slot dropped) */
void
rtsub_engine_reset_all(const char *reason)
{
	HASH_SEQ_STATUS status;
	RelSubs    *rs;

	if (subs_by_rel == NULL)
		return;
	hash_seq_init(&status, subs_by_rel);
	while ((rs = hash_seq_search(&status)) != NULL)
	{
		ListCell   *lc;

		foreach(lc, rs->subs)
			end_sub(lfirst(lc), reason);
	}
}

/* see session.h */
void
rtsub_subscription_describe(RtsubSubscription *sub, StringInfo out)
{
	static const char *const states[] = {"snapshot", "catching_up", "live"};
	char		cursor[RTSUB_POS_TEXT_LEN];

	rtsub_pos_format(sub->cursor, cursor);
	appendStringInfo(out, ",\"table_oid\":%u,\"table\":", sub->relid);
	escape_json(out, sub->relname);
	appendStringInfo(out, ",\"state\":\"%s\",\"position\":\"%s\",\"failed\":%s,\"messages_sent\":" UINT64_FORMAT
					 ",\"memory_bytes\":%zu",
					 sub->failed ? "failed" : sub->ended ? "ended" : states[sub->state],
					 cursor, sub->failed ? "true" : "false", sub->messages_sent,
					 MemoryContextMemAllocated(sub->cxt, true));
}

/* number of open subscriptions */
int
rtsub_subscription_count(void)
{
	return nsubs;
}

/* ----------------------------------------------------------------
 * Reading a snapshot (in a snapshot worker; see snapshot.c)
 * ----------------------------------------------------------------
 */

/* a snapshot chunk being built */
typedef struct ChunkBuilder
{
	RtsubSubscription *sub;
	int			chunk_rows;
	int			chunk_bytes;
	int			index;			/* of the chunk being built */
	int			nrows;
	StringInfoData rows;		/* the rows, encoded, separated (JSON) */
	StringInfoData msg;
	RtsubSnapshotEmit emit;
	void	   *arg;
} ChunkBuilder;

/* send the chunk built so far as a `snapshot` message */
static void
chunk_flush(ChunkBuilder *cb, bool last)
{
	RtsubWriter w;

	resetStringInfo(&cb->msg);
	rtsub_writer_init(&w, &cb->msg, cb->sub->format);
	w.enc->map_begin(&w, 5);
	rtsub_put_kv_str(&w, "type", "snapshot");
	rtsub_put_kv_str(&w, "id", cb->sub->client_id);
	w.enc->key(&w, "chunk", 5);
	w.enc->int64(&w, cb->index);
	w.enc->key(&w, "rows", 4);
	w.enc->array_begin(&w, cb->nrows);
	appendBinaryStringInfo(&cb->msg, cb->rows.data, cb->rows.len);
	w.enc->array_end(&w);
	w.enc->key(&w, "last", 4);
	w.enc->boolean(&w, last);
	w.enc->map_end(&w);
	cb->emit('C', cb->msg.data, cb->msg.len, cb->arg);
	cb->index++;
	cb->nrows = 0;
	resetStringInfo(&cb->rows);
}

/* add a visible row to the chunk; a full chunk is sent */
static void
chunk_add(ChunkBuilder *cb, TupleTableSlot *slot)
{
	RtsubWriter w;

	/* one chunk is held back: only the end of the scan knows the last */
	if (cb->nrows >= cb->chunk_rows || cb->rows.len >= cb->chunk_bytes)
		chunk_flush(cb, false);
	if (cb->nrows > 0 && cb->sub->format == RTSUB_FORMAT_JSON)
		appendStringInfoChar(&cb->rows, ',');
	rtsub_writer_init(&w, &cb->rows, cb->sub->format);
	write_row(cb->sub, &w, slot);
	cb->nrows++;
}

/* scan one table (a leaf of the subscription's table when partitioned) */
static void
scan_relation(ChunkBuilder *cb, Relation rel, TupleDesc root_desc,
			  Snapshot snapshot, ExprContext *econtext)
{
	RtsubSubscription *sub = cb->sub;
	TableScanDesc scan;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TupleTableSlot *root_slot = NULL;
	AttrMap    *map = build_attrmap_by_name_if_req(root_desc, RelationGetDescr(rel));

	if (map != NULL)
		root_slot = MakeSingleTupleTableSlot(root_desc, &TTSOpsVirtual);
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		TupleTableSlot *row = slot;

		CHECK_FOR_INTERRUPTS();
		if (map != NULL)
			row = execute_attr_map_slot(map, slot, root_slot);
		econtext->ecxt_scantuple = row;
		if (row_visible(sub, econtext))
		{
			/* values' text forms are per-row garbage (the buffers grow in their own context) */
			MemoryContext old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);

			chunk_add(cb, row);
			MemoryContextSwitchTo(old);
		}
		ResetExprContext(econtext);
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	if (root_slot)
		ExecDropSingleTupleTableSlot(root_slot);
}

/* emit a failure: code, NUL, message */
static void
emit_failure(RtsubSnapshotEmit emit, void *arg, const char *code, const char *message)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, code);
	appendStringInfoChar(&buf, '\0');
	appendStringInfoString(&buf, message);
	emit('E', buf.data, buf.len, arg);
}

/*
 * see snapshot.h: in one transaction, take a snapshot, send its horizon,
 * compile the subscription as the server does and send every row it lets
 * the client see, in chunks
 */
void
rtsub_snapshot_scan(const RtsubSnapshotRequest *req, RtsubSnapshotEmit emit, void *arg)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "rtsub snapshot",
											  ALLOCSET_DEFAULT_SIZES);
	RtsubSubscription *sub;
	RtsubClientIdentity who;
	RtsubClientMsg msg;
	const char *code;
	char	   *detail = NULL;

	ensure_registry();			/* the shared column descriptions live there */
	sub = MemoryContextAllocZero(cxt, sizeof(RtsubSubscription));
	sub->cxt = cxt;
	sub->format = req->format;
	sub->client_id = MemoryContextStrdup(cxt, req->id);
	sub->name = MemoryContextStrdup(cxt, req->subscription);
	sub->include_metadata = req->include_metadata;
	who.role = req->role;
	who.claims_json = req->claims_json;
	memset(&msg, 0, sizeof(msg));
	msg.type = RTSUB_MSG_SUBSCRIBE;
	msg.id = (char *) req->id;
	msg.subscription = (char *) req->subscription;
	msg.params_json = (char *) req->params_json;

	PG_TRY();
	{
		Snapshot	snapshot;
		StringInfoData h;
		RtsubSnapshotHorizon head;

		StartTransactionCommand();
		snapshot = RegisterSnapshot(GetTransactionSnapshot());
		PushActiveSnapshot(snapshot);

		/* the horizon first: which transactions the rows below include */
		head.wal_insert = GetXLogInsertRecPtr();
		head.xmin = snapshot->xmin;
		head.xmax = snapshot->xmax;
		head.xcnt = snapshot->xcnt;
		initStringInfo(&h);
		appendBinaryStringInfo(&h, (char *) &head, offsetof(RtsubSnapshotHorizon, xip));
		{
			TransactionId *xip = palloc(sizeof(TransactionId) * Max(snapshot->xcnt, 1));
			uint32		i,
						j;

			memcpy(xip, snapshot->xip, sizeof(TransactionId) * snapshot->xcnt);
			/* insertion sort: few running transactions */
			for (i = 1; i < snapshot->xcnt; i++)
				for (j = i; j > 0 && xip[j - 1] > xip[j]; j--)
				{
					TransactionId t = xip[j];

					xip[j] = xip[j - 1];
					xip[j - 1] = t;
				}
			appendBinaryStringInfo(&h, (char *) xip, sizeof(TransactionId) * snapshot->xcnt);
		}
		emit('S', h.data, h.len, arg);

		SPI_connect();
		code = open_in_transaction(&who, &msg, sub, &detail);
		SPI_finish();
		MemoryContextSwitchTo(cxt);
		if (code != NULL)
			emit_failure(emit, arg, code, detail);
		else
		{
			ChunkBuilder cb;
			Relation	rel = table_open(sub->relid, AccessShareLock);
			ExprContext *econtext = CreateStandaloneExprContext();

			memset(&cb, 0, sizeof(cb));
			cb.sub = sub;
			cb.chunk_rows = req->chunk_rows;
			cb.chunk_bytes = req->chunk_bytes;
			cb.emit = emit;
			cb.arg = arg;
			initStringInfo(&cb.rows);
			initStringInfo(&cb.msg);
			econtext->ecxt_param_list_info = sub->params;
			if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
			{
				ListCell   *lc;

				foreach(lc, find_all_inheritors(sub->relid, AccessShareLock, NULL))
				{
					Relation	part = table_open(lfirst_oid(lc), NoLock);

					if (RELKIND_HAS_STORAGE(part->rd_rel->relkind))
						scan_relation(&cb, part, RelationGetDescr(rel), snapshot, econtext);
					table_close(part, NoLock);
				}
			}
			else
				scan_relation(&cb, rel, RelationGetDescr(rel), snapshot, econtext);
			chunk_flush(&cb, true);
			FreeExprContext(econtext, true);
			table_close(rel, AccessShareLock);
			emit('D', NULL, 0, arg);
		}
		PopActiveSnapshot();
		UnregisterSnapshot(snapshot);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		emit_failure(emit, arg, "snapshot_failed", edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}
