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

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

#include "window.h"

extern void rtsub_evaluate_segment(RtsubSegment *seg);
extern bool rtsub_engine_step(XLogRecPtr read_upto, TimestampTz now);
extern void rtsub_engine_reset_all(const char *reason);
extern long rtsub_engine_wait_ms(long max_ms);
extern int	rtsub_subscription_count(void);

#endif							/* RTSUB_EVALUATE_H */
