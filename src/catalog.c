/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The rtsub catalogs as seen from C: the SQL-callable helpers the
 *	  catalog functions in sql/rtsub--*.sql use to validate definitions and
 *	  announce changes, and the publication lookup of the output plugin.
 *
 * The catalog tables themselves are created and maintained in SQL.
 * rtsub.publication is a user_catalog_table, so the output plugin may read
 * it under the historic snapshot of the change being decoded: a table is
 * emitted exactly from the transaction that published it.  Every change to
 * a publication also invalidates the published table's relcache entry; the
 * invalidation travels through WAL and tells the plugin's relation cache
 * (decoder.c) to look again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "rtsub.h"

PG_FUNCTION_INFO_V1(rtsub_check_expression);
PG_FUNCTION_INFO_V1(rtsub_invalidate_relation);

/* Attribute numbers of rtsub.publication */
#define Anum_publication_relid		1
#define Anum_publication_via_root	2

/* return the OID of rtsub.publication, or InvalidOid if not installed */
static Oid
publication_table_oid(void)
{
	Oid			nsp = get_namespace_oid(RTSUB_SCHEMA, true);

	if (!OidIsValid(nsp))
		return InvalidOid;
	return get_relname_relid(RTSUB_PUBLICATION_TABLE, nsp);
}

/* is the rtsub extension's publication catalog present? */
bool
rtsub_catalog_available(void)
{
	return OidIsValid(publication_table_oid());
}

/*
 * Look up relid in rtsub.publication with the current catalog snapshot
 * (the historic one while decoding).  Returns false if the catalog is
 * missing; info->published tells whether relid itself is published.
 */
bool
rtsub_lookup_publication(Oid relid, RtsubPublicationInfo *info)
{
	Oid			pubrelid = publication_table_oid();
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;

	info->published = false;
	info->via_root = false;
	if (!OidIsValid(pubrelid))
		return false;

	rel = table_open(pubrelid, AccessShareLock);
	ScanKeyInit(&key, Anum_publication_relid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_publication_via_root,
									 RelationGetDescr(rel), &isnull);

		info->published = true;
		info->via_root = !isnull && DatumGetBool(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return true;
}

/* extract a text[] argument as C strings, refusing NULL elements */
static int
text_array_to_cstrings(ArrayType *arr, char ***out, const char *what)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = palloc(sizeof(char *) * (n + 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", what)));
		(*out)[i] = TextDatumGetCString(elems[i]);
	}
	return n;
}

/* extract a regtype[] argument as type OIDs */
static int
regtype_array_to_oids(ArrayType *arr, Oid **out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(arr, REGTYPEOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	*out = palloc(sizeof(Oid) * (n + 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("parameter types must not contain nulls")));
		(*out)[i] = DatumGetObjectId(elems[i]);
	}
	return n;
}

/*
 * rtsub.check_expression(tbl, expr, kind, param_names, param_types)
 *		Parse and type-check a filter or policy expression; error if invalid.
 */
Datum
rtsub_check_expression(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *source;
	char	   *kindstr;
	RtsubExprKind kind;
	char	  **names = NULL;
	Oid		   *types = NULL;
	int			nnames = 0;
	int			ntypes = 0;
	Relation	rel;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table, expression and kind must not be null")));
	relid = PG_GETARG_OID(0);
	source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	kindstr = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (strcmp(kindstr, "filter") == 0)
		kind = RTSUB_EXPR_FILTER;
	else if (strcmp(kindstr, "policy") == 0)
		kind = RTSUB_EXPR_POLICY;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid expression kind \"%s\"", kindstr),
				 errhint("Valid kinds are \"filter\" and \"policy\".")));

	if (!PG_ARGISNULL(3))
		nnames = text_array_to_cstrings(PG_GETARG_ARRAYTYPE_P(3), &names,
										"parameter names");
	if (!PG_ARGISNULL(4))
		ntypes = regtype_array_to_oids(PG_GETARG_ARRAYTYPE_P(4), &types);
	if (nnames != ntypes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%d parameter names but %d parameter types", nnames, ntypes),
				 errhint("Give one type for every parameter name.")));

	rel = table_open(relid, AccessShareLock);
	(void) rtsub_parse_row_expression(rel, source, kind, nnames, names, types);
	table_close(rel, AccessShareLock);

	PG_RETURN_VOID();
}

/*
 * rtsub.invalidate_relation(tbl)
 *		Invalidate tbl's relcache entry so that decoding sessions re-read
 *		its publication when they reach this transaction's commit.
 */
Datum
rtsub_invalidate_relation(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}
