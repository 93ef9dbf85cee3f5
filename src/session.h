/*-------------------------------------------------------------------------
 *
 * session.h
 *	  The interface between client sessions (ws_server.c: WebSocket and SSE
 *	  connections, their send queues and protocol handling) and the
 *	  subscription engine (evaluate.c: opening subscriptions, evaluating
 *	  changes, building change messages).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_SESSION_H
#define RTSUB_SESSION_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "encode.h"
#include "protocol.h"

/* A client connection; owned by ws_server.c, opaque to the engine */
typedef struct RtsubSession RtsubSession;

/* An open subscription; owned by evaluate.c, opaque to sessions */
typedef struct RtsubSubscription RtsubSubscription;

/* What a session knows about its authenticated client */
typedef struct RtsubClientIdentity
{
	const char *role;			/* PostgreSQL role from the token */
	const char *claims_json;	/* the token's claims, as signed */
} RtsubClientIdentity;

/* ---- provided by ws_server.c, called by evaluate.c ---- */

/* queue one complete message for the client (copied); false if the
 * session is closing or its send queue is already over
 * rtsub.max_send_buffer, in which case the session closes itself with 4009
 * (so a queue passes the limit by at most one message) */
extern bool rtsub_session_send(RtsubSession *session, const char *data, size_t len);

/* subscribe's priority: 0-9, higher is written first when messages queue up */
#define RTSUB_PRIORITIES		10
#define RTSUB_DEFAULT_PRIORITY	5

/* rtsub_session_send() at a priority (a subscription's) */
extern bool rtsub_session_send_priority(RtsubSession *session, const char *data,
										size_t len, int priority);

/* the commit time of the change the next messages carry (0: none) */
extern void rtsub_session_event_time(TimestampTz commit_time);

/* the session's wire format */
extern RtsubFormat rtsub_session_format(RtsubSession *session);

/* bytes queued for the client and not yet written */
extern size_t rtsub_session_queued(RtsubSession *session);

/* the engine ended one of the session's subscriptions (after a `reset`):
 * the session forgets it and closes it with rtsub_subscription_close() */
extern void rtsub_session_subscription_ended(RtsubSession *session,
											 RtsubSubscription *sub);

/* describe the sessions and their subscriptions as a JSON array (monitor.c) */
extern void rtsub_sessions_describe(StringInfo out);

/* ---- provided by evaluate.c, called by ws_server.c ---- */

/* append ,"key":value pairs describing a subscription (state, table, ...) */
extern void rtsub_subscription_describe(RtsubSubscription *sub, StringInfo out);

/* rtsub_subscription_open's result when it sent `reset` and opened nothing */
#define RTSUB_OPEN_RESET "reset"

/*
 * Open a subscription for a session from a parsed subscribe message (with
 * its snapshot or resume).  Runs its own transaction.  On success returns
 * NULL, sets *sub and has queued `subscribed` (and whatever follows will
 * follow).  RTSUB_OPEN_RESET: a resume was impossible, `reset` is queued
 * and nothing was opened.  Else a protocol error code (unknown_subscription,
 * forbidden, bad_params, bad_field, internal) with *detail.  Never raises
 * an ERROR.
 */
extern const char *rtsub_subscription_open(RtsubSession *session,
										   const RtsubClientIdentity *who,
										   const RtsubClientMsg *msg,
										   RtsubSubscription **sub,
										   char **detail);

/* close a subscription (unsubscribe, or its session closed); never raises */
extern void rtsub_subscription_close(RtsubSubscription *sub);

#endif							/* RTSUB_SESSION_H */
