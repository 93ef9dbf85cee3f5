/*-------------------------------------------------------------------------
 *
 * filter.c
 *	  Parse and type-check the row expressions of rtsub: subscription
 *	  filters and permission policies.
 *
 * An expression is parsed with PostgreSQL's own parser as the target of
 * "SELECT <expr>" and accepted only if that statement has nothing but one
 * target, so no clause can be smuggled in.  It is then analyzed against the
 * subscribed table (its columns are in scope, unqualified or qualified by
 * the table's name) like a WHERE clause: aggregates, window functions and
 * set-returning functions are refused by the analyzer itself.  We add our
 * own rules: the result is boolean, nothing volatile, no subqueries, no
 * system columns.  Filters may use typed parameters, written
 * params.<name>, which become PARAM_EXTERN nodes numbered in declaration
 * order; JWT claims are read with rtsub.claim()/rtsub.claims().
 *
 * The result is the analyzed expression tree, ready for the planner's
 * expression preprocessing and ExecInitExpr in the server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "rtsub.h"

#define PARAMS_QUALIFIER "params"

typedef struct ParamScope
{
	RtsubExprKind kind;
	int			nparams;
	char	  **names;
	Oid		   *types;
} ParamScope;

/* name the kind of expression in messages */
static const char *
expr_kind_name(RtsubExprKind kind)
{
	return kind == RTSUB_EXPR_FILTER ? "subscription filter" : "permission policy";
}

/* resolve params.<name> to a typed parameter before column lookup */
static Node *
params_columnref_hook(ParseState *pstate, ColumnRef *cref)
{
	ParamScope *scope = (ParamScope *) pstate->p_ref_hook_state;
	Node	   *first;
	const char *pname;
	Param	   *param;
	int			i;

	if (list_length(cref->fields) != 2)
		return NULL;
	first = linitial(cref->fields);
	if (!IsA(first, String) || strcmp(strVal(first), PARAMS_QUALIFIER) != 0)
		return NULL;
	if (!IsA(lsecond(cref->fields), String))
		return NULL;
	pname = strVal(lsecond(cref->fields));

	if (scope->kind != RTSUB_EXPR_FILTER)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("permission policies cannot use parameters"),
				 errdetail("The policy refers to \"%s.%s\".", PARAMS_QUALIFIER, pname),
				 errhint("Policies see the row and the JWT claims only; read claims with rtsub.claim()."),
				 parser_errposition(pstate, cref->location)));

	for (i = 0; i < scope->nparams; i++)
	{
		if (strcmp(scope->names[i], pname) == 0)
			break;
	}
	if (i == scope->nparams)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("subscription parameter \"%s\" is not declared", pname),
				 errhint("Declare it in the params argument, for example params => '{\"%s\": \"text\"}'.", pname),
				 parser_errposition(pstate, cref->location)));

	param = makeNode(Param);
	param->paramkind = PARAM_EXTERN;
	param->paramid = i + 1;
	param->paramtype = scope->types[i];
	param->paramtypmod = -1;
	param->paramcollid = get_typcollation(scope->types[i]);
	param->location = cref->location;
	return (Node *) param;
}

/* refuse references to system columns, which decoded rows do not carry */
static bool
check_no_system_columns(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) && ((Var *) node)->varattno < 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot refer to system columns",
						expr_kind_name(*(RtsubExprKind *) context)),
				 errhint("Use the table's own columns; system columns such as ctid or xmin have no meaning for a decoded change.")));
	return expression_tree_walker(node, check_no_system_columns, context);
}

/* report parser positions against the expression text, not the caller's query */
static void
expression_error_callback(void *arg)
{
	const char *sql = (const char *) arg;
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery(sql);
	}
}

/* parse sql ("SELECT <source>") and return the single target's raw expression */
static Node *
raw_parse_expression(const char *sql, const char *source, RtsubExprKind kind)
{
	List	   *stmts;
	RawStmt    *raw;
	SelectStmt *sel;
	ResTarget  *rt;

	stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	if (list_length(stmts) != 1)
		goto bad;
	raw = linitial_node(RawStmt, stmts);
	if (!IsA(raw->stmt, SelectStmt))
		goto bad;
	sel = (SelectStmt *) raw->stmt;
	if (sel->distinctClause || sel->intoClause || sel->fromClause ||
		sel->whereClause || sel->groupClause || sel->havingClause ||
		sel->windowClause || sel->valuesLists || sel->sortClause ||
		sel->limitOffset || sel->limitCount || sel->lockingClause ||
		sel->withClause || sel->op != SETOP_NONE ||
		list_length(sel->targetList) != 1)
		goto bad;
	rt = linitial_node(ResTarget, sel->targetList);
	if (rt->name != NULL || (IsA(rt->val, ColumnRef) &&
		IsA(llast(((ColumnRef *) rt->val)->fields), A_Star)))
		goto bad;
	return rt->val;

bad:
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("%s must be a single boolean expression", expr_kind_name(kind)),
			 errdetail("Got: %s", source),
			 errhint("Write an expression such as \"status = 'open' AND owner = rtsub.claim('sub')\", without SELECT, FROM or other clauses.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * Parse, analyze and check a row expression over rel.  Returns the analyzed
 * boolean expression, or raises an error with errcode, message and hint.
 */
Node *
rtsub_parse_row_expression(Relation rel, const char *source,
						   RtsubExprKind kind, int nparams,
						   char **param_names, Oid *param_types)
{
	ErrorContextCallback errcallback;
	char	   *sql;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	ParamScope	scope;
	Node	   *raw;
	Node	   *expr;
	Oid			type;

	if (source == NULL || source[strspn(source, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", expr_kind_name(kind)),
				 errhint("Pass NULL for no filter, or an expression such as \"true\".")));

	sql = psprintf("SELECT %s", source);
	errcallback.callback = expression_error_callback;
	errcallback.arg = sql;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	raw = raw_parse_expression(sql, source, kind);

	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = sql;
	scope.kind = kind;
	scope.nparams = nparams;
	scope.names = param_names;
	scope.types = param_types;
	pstate->p_ref_hook_state = &scope;
	pstate->p_pre_columnref_hook = params_columnref_hook;

	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, false);
	addNSItemToQuery(pstate, nsitem, false, true, true);

	expr = transformExpr(pstate, raw, EXPR_KIND_WHERE);

	type = exprType(expr);
	if (type == UNKNOWNOID)
	{
		expr = coerce_to_boolean(pstate, expr, expr_kind_name(kind));
		type = BOOLOID;
	}
	if (type != BOOLOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s must be of type boolean, not type %s",
						expr_kind_name(kind), format_type_be(type)),
				 errhint("Compare the value with something, for example \"(%s) IS NOT NULL\".", source)));

	if (pstate->p_hasSubLinks)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot contain subqueries", expr_kind_name(kind)),
				 errhint("Evaluate conditions on other tables in a STABLE function, or enable the table's native row-level security policies.")));

	assign_expr_collations(pstate, expr);

	if (contain_volatile_functions(expr))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot use volatile functions", expr_kind_name(kind)),
				 errdetail("The expression is evaluated for every change and must give the same answer for the same row."),
				 errhint("Use only IMMUTABLE or STABLE functions and operators.")));

	check_no_system_columns(expr, &kind);

	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return expr;
}
