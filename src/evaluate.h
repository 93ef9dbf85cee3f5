/*-------------------------------------------------------------------------
 *
 * evaluate.h
 *	  The rtsub server's subscription engine (see evaluate.c and session.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_EVALUATE_H
#define RTSUB_EVALUATE_H

#include "postgres.h"

#include "nodes/pg_list.h"

extern void rtsub_evaluate_batch(List *changes);
extern int	rtsub_subscription_count(void);

#endif							/* RTSUB_EVALUATE_H */
