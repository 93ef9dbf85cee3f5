/*-------------------------------------------------------------------------
 *
 * window.c
 *	  Owns the rtsub server's resume window: the decoded changes kept in the
 *	  server's memory for clients that resume after a disconnect and for
 *	  subscriptions that catch up after a snapshot; the stream's epoch; and
 *	  what the server may confirm to its slot.
 *
 * Design notes
 *
 * Each decoded batch (whole transactions, see stream.c) becomes a segment
 * appended to the window.  Segments leave the window from its old end once
 * it holds more than rtsub.resume_window_size or their newest change is
 * older than rtsub.resume_window.  The window's start is the last event
 * that left it: every event after the start is in the window (or not
 * decoded yet), so a client can resume after any event id >= start.
 *
 * The window survives restarts because the slot is never confirmed past
 * it: the confirmed position is the commit LSN of the window's oldest
 * transaction (or, with the window empty, what has been read), and on
 * start decoding begins there, so the window is decoded again.  The start
 * and the confirmed position are written to the state file
 * ($PGDATA/rtsub.state, atomically and durably) before the slot is
 * confirmed, at most once a second: a crash can lose neither.  Decoding
 * again is deterministic, so event ids are the same; changes that are
 * already in the window (after a stream error) are not appended twice.
 *
 * The epoch names the stream: it is chosen when the server creates its
 * slot and kept in the state file.  A state file that belongs to another
 * slot, or none, means the history is unknown: a new epoch, and clients
 * get a reset.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "config.h"
#include "shmem.h"
#include "window.h"

#define STATE_FILE			"rtsub.state"
#define STATE_TMP_FILE		"rtsub.state.tmp"
#define CHECKPOINT_EVERY_MS	1000

static bool window_open = false;
static List *segments = NIL;	/* RtsubSegment *, oldest first */
static Size window_bytes = 0;
static RtsubPos window_start;	/* the last event that left the window */
static RtsubPos persisted_start;	/* as in the state file */
static XLogRecPtr persisted_confirm = InvalidXLogRecPtr;
static TimestampTz last_checkpoint = 0;
static char slot[NAMEDATALEN];
static char epoch[RTSUB_EPOCH_LEN + 1];

/* format an event id, "X/X:n" (buf has RTSUB_POS_TEXT_LEN bytes) */
void
rtsub_pos_format(RtsubPos p, char *buf)
{
	snprintf(buf, RTSUB_POS_TEXT_LEN, "%X/%X:%u", LSN_FORMAT_ARGS(p.lsn), p.pos);
}

/* parse an event id; false if it is not one */
bool
rtsub_pos_parse(const char *s, RtsubPos *p)
{
	unsigned int hi,
				lo,
				pos;
	int			n = 0;

	if (s == NULL || sscanf(s, "%X/%X:%u%n", &hi, &lo, &pos, &n) != 3 ||
		s[n] != '\0' || !isxdigit((unsigned char) s[0]))
		return false;
	p->lsn = ((uint64) hi << 32) | lo;
	p->pos = pos;
	return true;
}

/* write the state file: slot, epoch, start and confirmed position */
static void
write_state(XLogRecPtr confirm)
{
	FILE	   *f;
	char		start[RTSUB_POS_TEXT_LEN];

	rtsub_pos_format(window_start, start);
	f = AllocateFile(STATE_TMP_FILE, PG_BINARY_W);
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", STATE_TMP_FILE)));
	fprintf(f, "rtsub-state 1\nslot %s\nepoch %s\nstart %s\nconfirm %X/%X\n",
			slot, epoch, start, LSN_FORMAT_ARGS(confirm));
	if (fflush(f) != 0 || pg_fsync(fileno(f)) != 0)
	{
		int			save_errno = errno;

		FreeFile(f);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", STATE_TMP_FILE)));
	}
	if (FreeFile(f) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", STATE_TMP_FILE)));
	durable_rename(STATE_TMP_FILE, STATE_FILE, ERROR);
	persisted_start = window_start;
	persisted_confirm = confirm;
}

/* read the state file if it belongs to slot_name; false if not */
static bool
read_state(const char *slot_name)
{
	FILE	   *f = AllocateFile(STATE_FILE, PG_BINARY_R);
	char		fslot[NAMEDATALEN + 1];
	char		fepoch[RTSUB_EPOCH_LEN + 2];
	char		fstart[RTSUB_POS_TEXT_LEN + 1];
	unsigned int hi,
				lo;
	int			version;
	bool		ok;

	if (f == NULL)
		return false;
	ok = fscanf(f, "rtsub-state %d\nslot %63s\nepoch %17s\nstart %47s\nconfirm %X/%X\n",
				&version, fslot, fepoch, fstart, &hi, &lo) == 6 &&
		version == 1 &&
		strcmp(fslot, slot_name) == 0 &&
		strlen(fepoch) == RTSUB_EPOCH_LEN &&
		rtsub_pos_parse(fstart, &window_start);
	FreeFile(f);
	if (!ok)
		return false;
	memcpy(epoch, fepoch, RTSUB_EPOCH_LEN + 1);
	persisted_confirm = ((uint64) hi << 32) | lo;
	return true;
}

/*
 * Open the window for the server's slot, whose confirmed position is
 * confirmed (decoding starts there); created: the slot is new.
 */
void
rtsub_window_open(const char *slot_name, bool created, XLogRecPtr confirmed)
{
	rtsub_window_close();
	strlcpy(slot, slot_name, sizeof(slot));
	/*
	 * A slot confirmed past what this server confirmed (someone consumed or
	 * advanced it) has lost events: that history is unknown too.
	 */
	if (created || !read_state(slot_name) || confirmed > persisted_confirm)
	{
		/* no known history: nothing before the slot's position */
		rtsub_new_epoch(epoch);
		window_start.lsn = confirmed > 0 ? confirmed - 1 : 0;
		window_start.pos = PG_UINT32_MAX;
		write_state(confirmed);
		ereport(LOG,
				(errmsg("rtsub: new stream epoch %s for slot \"%s\"", epoch, slot_name)));
	}
	persisted_start = window_start;
	if (rtsub_shared)
	{
		SpinLockAcquire(&rtsub_shared->mutex);
		memcpy(rtsub_shared->epoch, epoch, RTSUB_EPOCH_LEN + 1);
		SpinLockRelease(&rtsub_shared->mutex);
	}
	window_open = true;
}

/* forget every segment (the stream is gone: slot dropped, worker exits) */
void
rtsub_window_close(void)
{
	ListCell   *lc;

	foreach(lc, segments)
		MemoryContextDelete(((RtsubSegment *) lfirst(lc))->cxt);
	list_free(segments);
	segments = NIL;
	window_bytes = 0;
	window_open = false;
}

/* is the window open (the stream has a slot)? */
bool
rtsub_window_is_open(void)
{
	return window_open;
}

/* the stream's epoch */
const char *
rtsub_window_epoch(void)
{
	return epoch;
}

/*
 * Append a decoded batch; the window takes cxt (which holds the changes)
 * and deletes it when the segment leaves.  Changes already in the window
 * (decoded again after a stream error) are left out.  Returns the new
 * segment, or NULL when nothing was new.
 */
RtsubSegment *
rtsub_window_append(MemoryContext cxt, List *changes)
{
	RtsubPos	head = rtsub_window_head();
	RtsubSegment *seg;
	MemoryContext old;
	ListCell   *lc;
	int			n = 0;

	foreach(lc, changes)
		if (rtsub_pos_cmp(rtsub_change_pos(lfirst(lc)), head) > 0)
			n++;
	if (n == 0)
	{
		MemoryContextDelete(cxt);
		return NULL;
	}
	old = MemoryContextSwitchTo(cxt);
	seg = palloc0(sizeof(RtsubSegment));
	seg->cxt = cxt;
	seg->changes = palloc(sizeof(RtsubChange *) * n);
	foreach(lc, changes)
	{
		RtsubChange *c = lfirst(lc);

		if (rtsub_pos_cmp(rtsub_change_pos(c), head) > 0)
			seg->changes[seg->nchanges++] = c;
	}
	seg->first = rtsub_change_pos(seg->changes[0]);
	seg->last = rtsub_change_pos(seg->changes[n - 1]);
	seg->last_time = seg->changes[n - 1]->commit_time;
	seg->bytes = MemoryContextMemAllocated(cxt, true);
	MemoryContextSwitchTo(TopMemoryContext);
	segments = lappend(segments, seg);
	MemoryContextSwitchTo(old);
	window_bytes += seg->bytes;
	return seg;
}

/* number of segments */
int
rtsub_window_nsegments(void)
{
	return list_length(segments);
}

/* the i-th segment, oldest first */
RtsubSegment *
rtsub_window_segment(int i)
{
	return list_nth(segments, i);
}

/* index of the first segment holding an event after pos (nsegments: none) */
int
rtsub_window_find(RtsubPos after)
{
	int			lo = 0;
	int			hi = list_length(segments);

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (rtsub_pos_cmp(((RtsubSegment *) list_nth(segments, mid))->last, after) > 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/* the last event that left the window: resuming needs an id >= it */
RtsubPos
rtsub_window_start(void)
{
	return window_start;
}

/* the newest event in the window (its start when empty) */
RtsubPos
rtsub_window_head(void)
{
	if (segments == NIL)
		return window_start;
	return ((RtsubSegment *) llast(segments))->last;
}

/* memory held by the window */
Size
rtsub_window_bytes(void)
{
	return window_bytes;
}

/*
 * Let segments leave the window that are over its size or age; never one
 * with an event after *hold (a subscription that has not decided yet where
 * it starts), when hold is given.
 */
void
rtsub_window_trim(TimestampTz now, const RtsubPos *hold)
{
	Size		max_bytes = (Size) rtsub_resume_window_size * 1024;
	TimestampTz oldest = now - (TimestampTz) rtsub_resume_window * USECS_PER_SEC;

	while (segments != NIL)
	{
		RtsubSegment *seg = linitial(segments);

		if (window_bytes <= max_bytes && seg->last_time >= oldest)
			break;
		if (hold != NULL && rtsub_pos_cmp(seg->last, *hold) > 0)
			break;
		window_start = seg->last;
		window_bytes -= seg->bytes;
		segments = list_delete_first(segments);
		MemoryContextDelete(seg->cxt);
	}
}

/*
 * The position the slot may be confirmed up to, given that WAL has been
 * decoded up to read_upto: every event before it has left the window and
 * is recorded as such in the state file (written here when needed, at most
 * once a second).
 */
XLogRecPtr
rtsub_window_checkpoint(XLogRecPtr read_upto, TimestampTz now)
{
	XLogRecPtr	candidate;

	if (!window_open)
		return InvalidXLogRecPtr;
	candidate = segments != NIL ?
		((RtsubSegment *) linitial(segments))->first.lsn : read_upto;
	if (candidate > persisted_confirm &&
		TimestampDifferenceExceeds(last_checkpoint, now, CHECKPOINT_EVERY_MS))
	{
		write_state(candidate);
		last_checkpoint = now;
	}
	return persisted_confirm;
}
