/*-------------------------------------------------------------------------
 *
 * window.h
 *	  The rtsub server's resume window: the decoded changes it keeps so that
 *	  clients can resume and snapshots can catch up (see window.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_WINDOW_H
#define RTSUB_WINDOW_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

#include "stream.h"

/* A position in the stream: an event id (commit LSN, position in the commit) */
typedef struct RtsubPos
{
	XLogRecPtr	lsn;
	uint32		pos;
} RtsubPos;

#define RTSUB_POS_TEXT_LEN 48

/* compare two positions: <0, 0, >0 */
static inline int
rtsub_pos_cmp(RtsubPos a, RtsubPos b)
{
	if (a.lsn != b.lsn)
		return a.lsn < b.lsn ? -1 : 1;
	if (a.pos != b.pos)
		return a.pos < b.pos ? -1 : 1;
	return 0;
}

/* the position of a decoded change */
static inline RtsubPos
rtsub_change_pos(const RtsubChange *c)
{
	RtsubPos	p;

	p.lsn = c->commit_lsn;
	p.pos = c->pos;
	return p;
}

/* One decoded batch kept in the window: whole transactions, in commit order */
typedef struct RtsubSegment
{
	MemoryContext cxt;			/* owns the changes (and this segment) */
	RtsubChange **changes;
	int			nchanges;
	RtsubPos	first;
	RtsubPos	last;
	TimestampTz last_time;		/* commit time of the last change */
	Size		bytes;			/* memory held */
} RtsubSegment;

extern void rtsub_pos_format(RtsubPos p, char *buf);
extern bool rtsub_pos_parse(const char *s, RtsubPos *p);

extern void rtsub_window_open(const char *slot_name, bool created,
							  XLogRecPtr confirmed);
extern void rtsub_window_close(void);
extern bool rtsub_window_is_open(void);
extern const char *rtsub_window_epoch(void);
extern RtsubSegment *rtsub_window_append(MemoryContext cxt, List *changes);
extern int	rtsub_window_nsegments(void);
extern RtsubSegment *rtsub_window_segment(int i);
extern int	rtsub_window_find(RtsubPos after);
extern RtsubPos rtsub_window_start(void);
extern RtsubPos rtsub_window_head(void);
extern Size rtsub_window_bytes(void);
extern void rtsub_window_trim(TimestampTz now, const RtsubPos *hold);
extern XLogRecPtr rtsub_window_checkpoint(XLogRecPtr read_upto, TimestampTz now);

#endif							/* RTSUB_WINDOW_H */
