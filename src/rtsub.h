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

#endif							/* RTSUB_H */
