/*-------------------------------------------------------------------------
 *
 * snapshot.h
 *	  Initial snapshots of subscriptions, read by worker processes of their
 *	  own (see snapshot.c); the scan itself is evaluate.c's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_SNAPSHOT_H
#define RTSUB_SNAPSHOT_H

#include "postgres.h"

#include "access/xlogdefs.h"

#include "encode.h"
#include "session.h"

/* What a snapshot worker is asked to read (strings are NUL-terminated) */
typedef struct RtsubSnapshotRequest
{
	RtsubFormat format;
	int			chunk_rows;
	int			chunk_bytes;
	bool		include_metadata;
	const char *id;				/* the client's subscription id */
	const char *subscription;
	const char *params_json;	/* or NULL */
	const char *role;
	const char *claims_json;
} RtsubSnapshotRequest;

/*
 * What a snapshot worker sends back, one message each, the kind in the
 * first byte: 'S' the snapshot's horizon (RtsubSnapshotHorizon), 'C' a
 * complete `snapshot` protocol message, 'D' done, 'E' failed (a protocol
 * error code, NUL, a message).
 */
typedef struct RtsubSnapshotHorizon
{
	XLogRecPtr	wal_insert;		/* WAL insert position after the snapshot */
	TransactionId xmin;
	TransactionId xmax;
	uint32		xcnt;
	TransactionId xip[FLEXIBLE_ARRAY_MEMBER];	/* sorted */
} RtsubSnapshotHorizon;

typedef void (*RtsubSnapshotEmit) (char kind, const char *data, size_t len,
								   void *arg);

typedef struct RtsubSnapshotReader RtsubSnapshotReader;

/* main worker side (snapshot.c) */
extern RtsubSnapshotReader *rtsub_snapshot_request(RtsubSubscription *sub,
												   const RtsubSnapshotRequest *req);
extern void rtsub_snapshot_stop(RtsubSnapshotReader *reader);
extern bool rtsub_snapshots_poll(void);

/* snapshot worker side: the scan (evaluate.c) */
extern void rtsub_snapshot_scan(const RtsubSnapshotRequest *req,
								RtsubSnapshotEmit emit, void *arg);

/* callbacks of the readers into the engine (evaluate.c) */
extern void rtsub_snapshot_on_horizon(RtsubSubscription *sub,
									  const RtsubSnapshotHorizon *h, size_t len);
extern void rtsub_snapshot_on_chunk(RtsubSubscription *sub, const char *data, size_t len);
extern void rtsub_snapshot_on_done(RtsubSubscription *sub);
extern void rtsub_snapshot_on_failed(RtsubSubscription *sub, const char *code,
									 const char *message);
extern bool rtsub_snapshot_may_send(RtsubSubscription *sub);

#endif							/* RTSUB_SNAPSHOT_H */
