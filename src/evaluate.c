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
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "rewrite/rowsecurity.h"
#include "utils/snapmgr.h"

#include "encode.h"
#include "evaluate.h"
#include "rtsub.h"
#include "session.h"
#include "stream.h"

struct RtsubSubscription
{
	RtsubSession *session;
	MemoryContext cxt;			/* owns everything below */
	char	   *client_id;		/* the subscribe message's id */
	char	   *name;			/* subscription name */
	Oid			relid;
	Oid			roleid;
	XLogRecPtr	live_from;		/* changes committed from here on */
	bool		include_metadata;
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

static HTAB *subs_by_rel = NULL;
static MemoryContext engine_cxt = NULL;
static int	nsubs = 0;

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
	expr = fold_claims(expr, cc);
	expr = (Node *) expression_planner((Expr *) expr);
	expr = fold_claims(expr, cc);
	expr = (Node *) expression_planner((Expr *) expr);
	return ExecInitExpr((Expr *) expr, NULL);
}

/* analyze, fold claims, plan and compile one expression */
static ExprState *
compile_expression(Relation rel, const char *source, RtsubExprKind kind,
				   int nparams, char **names, Oid *types, ClaimsContext *cc)
{
	Node	   *expr = rtsub_parse_row_expression(rel, source, kind, nparams,
												  names, types);

	return compile_tree(expr, cc);
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
	int			i;

	sub->cols = palloc0(sizeof(RtsubColumn) * Max(desc->natts, 1));
	sub->ncols = 0;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || !bms_is_member(att->attnum, sent))
			continue;
		sub->cols[sub->ncols].attnum = att->attnum;
		rtsub_column_init(&sub->cols[sub->ncols], NameStr(att->attname),
						  att->atttypid, format, sub->cxt);
		sub->ncols++;
	}
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
open_in_transaction(RtsubSession *session, const RtsubClientIdentity *who,
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

	sub->roleid = get_role_oid(who->role, true);
	if (!OidIsValid(sub->roleid))
		OPEN_FAIL("forbidden", "Role \"%s\" does not exist.", who->role);

	/* the definition */
	args[0] = CStringGetTextDatum(msg->subscription);
	if (SPI_execute_with_args("SELECT relid, filter, columns, param_names, param_types, roles "
							  "FROM rtsub.subscription WHERE name = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.subscription");
	/* SPI leaves its own (short-lived) context current: compile into ours */
	MemoryContextSwitchTo(sub->cxt);
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
	code = bind_params(sub, msg->params_json, nparams, pnames, ptypes, detail);
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
		sub->filter = compile_expression(rel, filter, RTSUB_EXPR_FILTER,
										 nparams, pnames, ptypes, &cc);
	}

	/* the policies that apply to the role */
	args[0] = ObjectIdGetDatum(sub->relid);
	argtypes[0] = OIDOID;
	if (SPI_execute_with_args("SELECT using_expr, roles, permissive FROM rtsub.policy "
							  "WHERE relid = $1 ORDER BY name",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.policy");
	MemoryContextSwitchTo(sub->cxt);
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
		state = compile_expression(rel, using_expr, RTSUB_EXPR_POLICY, 0,
								   NULL, NULL, &cc);
		sub->has_policies = true;
		if (permissive)
			sub->permissive = lappend(sub->permissive, state);
		else
			sub->restrictive = lappend(sub->restrictive, state);
	}

	/* the table's own row-level security, when published with native_rls */
	argtypes[0] = OIDOID;
	args[0] = ObjectIdGetDatum(sub->relid);
	if (SPI_execute_with_args("SELECT native_rls FROM rtsub.publication WHERE relid = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read rtsub.publication");
	MemoryContextSwitchTo(sub->cxt);
	if (SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) &&
		check_enable_rls(sub->relid, sub->roleid, true) == RLS_ENABLED)
	{
		code = compile_native_rls(sub, rel, &cc, detail);
		if (code)
			goto fail;
	}

	build_columns(sub, rel, sent, rtsub_session_format(session));
	table_close(rel, AccessShareLock);
	return NULL;

fail:
	if (rel != NULL)
		table_close(rel, AccessShareLock);
	return code;
}

/* see session.h */
const char *
rtsub_subscription_open(RtsubSession *session, const RtsubClientIdentity *who,
						const RtsubClientMsg *msg, RtsubSubscription **subp,
						XLogRecPtr *live_from, char **detail)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext cxt;
	RtsubSubscription *volatile sub;
	const char *volatile code = NULL;

	ensure_registry();
	cxt = AllocSetContextCreate(engine_cxt, "rtsub subscription",
								ALLOCSET_SMALL_SIZES);
	sub = MemoryContextAllocZero(cxt, sizeof(RtsubSubscription));
	sub->cxt = cxt;
	sub->session = session;

	PG_TRY();
	{
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		MemoryContextSwitchTo(cxt);
		sub->client_id = pstrdup(msg->id);
		sub->name = pstrdup(msg->subscription);
		sub->include_metadata = msg->include_metadata;
		code = open_in_transaction(session, who, msg, sub, detail);
		if (code != NULL)
			*detail = MemoryContextStrdup(callercxt, *detail);
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

	/* live from what has not been decoded yet: nothing committed later is missed */
	sub->live_from = rtsub_stream_read_upto();
	if (sub->live_from == InvalidXLogRecPtr)
		sub->live_from = GetFlushRecPtr(NULL);
	{
		bool		found;
		RelSubs    *rs = hash_search(subs_by_rel, &sub->relid, HASH_ENTER, &found);
		MemoryContext old = MemoryContextSwitchTo(engine_cxt);

		if (!found)
			rs->subs = NIL;
		rs->subs = lappend(rs->subs, sub);
		MemoryContextSwitchTo(old);
	}
	nsubs++;
	*subp = sub;
	*live_from = sub->live_from;
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

/* send one change event to the subscription's client */
static void
send_change(RtsubSubscription *sub, const RtsubChange *c, const char *op,
			TupleTableSlot *row, TupleTableSlot *old)
{
	StringInfoData buf;
	RtsubWriter w;
	char		event[64];
	int			n = 6;

	initStringInfo(&buf);
	rtsub_writer_init(&w, &buf, rtsub_session_format(sub->session));
	snprintf(event, sizeof(event), "%X/%X:%u", LSN_FORMAT_ARGS(c->commit_lsn), c->pos);
	if (old != NULL)
		n++;
	if (sub->include_metadata)
		n += 2;
	w.enc->map_begin(&w, n);
	rtsub_put_kv_str(&w, "type", "change");
	rtsub_put_kv_str(&w, "id", sub->client_id);
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
	}
	w.enc->map_end(&w);
	rtsub_session_send(sub->session, buf.data, buf.len);
	pfree(buf.data);
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

/*
 * evaluate one change for the subscriptions of its table; an ERROR stops
 * only the subscription it happened in, which is told so
 */
static void
evaluate_subscriptions(List *subs, const RtsubChange *c,
					   TupleTableSlot *newslot, TupleTableSlot *oldslot,
					   ExprContext **econtextp, MemoryContext batchcxt)
{
	ListCell   *sc;

	foreach(sc, subs)
	{
		RtsubSubscription *sub = lfirst(sc);

		if (sub->failed || c->commit_lsn < sub->live_from)
			continue;
		PG_TRY();
		{
			evaluate_one(sub, c, newslot, oldslot, *econtextp);
		}
		PG_CATCH();
		{
			ErrorData  *edata;
			StringInfoData buf;

			MemoryContextSwitchTo(batchcxt);
			edata = CopyErrorData();
			FlushErrorState();
			sub->failed = true;
			initStringInfo(&buf);
			rtsub_msg_error(&buf, rtsub_session_format(sub->session), "internal",
							edata->message, sub->client_id);
			rtsub_session_send(sub->session, buf.data, buf.len);
			ereport(LOG,
					(errmsg("rtsub: subscription \"%s\" stopped: %s",
							sub->name, edata->message)));
			FreeErrorData(edata);
			/* the transaction may be in any state: start afresh */
			AbortCurrentTransaction();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			*econtextp = CreateStandaloneExprContext();
			MemoryContextSwitchTo(batchcxt);
		}
		PG_END_TRY();
	}
}

/* evaluate a decoded batch for every open subscription of each change's table */
void
rtsub_evaluate_batch(List *changes)
{
	ListCell   *lc;
	ExprContext *econtext;
	MemoryContext batchcxt = CurrentMemoryContext;

	if (subs_by_rel == NULL || nsubs == 0 || changes == NIL)
		return;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	econtext = CreateStandaloneExprContext();

	foreach(lc, changes)
	{
		RtsubChange *c = lfirst(lc);
		RelSubs    *rs;
		TupleTableSlot *newslot = NULL;
		TupleTableSlot *oldslot = NULL;

		if (c->op != 'I' && c->op != 'U' && c->op != 'D')
			continue;
		rs = hash_search(subs_by_rel, &c->relid, HASH_FIND, NULL);
		if (rs == NULL)
			continue;

		MemoryContextSwitchTo(batchcxt);
		if (c->newtup)
		{
			newslot = MakeSingleTupleTableSlot(c->desc, &TTSOpsHeapTuple);
			ExecStoreHeapTuple(c->newtup, newslot, false);
		}
		if (c->oldtup)
		{
			oldslot = MakeSingleTupleTableSlot(c->desc, &TTSOpsHeapTuple);
			ExecStoreHeapTuple(c->oldtup, oldslot, false);
		}

		evaluate_subscriptions(rs->subs, c, newslot, oldslot, &econtext, batchcxt);
		if (newslot)
			ExecDropSingleTupleTableSlot(newslot);
		if (oldslot)
			ExecDropSingleTupleTableSlot(oldslot);
	}

	FreeExprContext(econtext, true);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(batchcxt);
}

/* number of open subscriptions */
int
rtsub_subscription_count(void)
{
	return nsubs;
}
