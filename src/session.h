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
 * session is closing or its send queue is over rtsub.max_send_buffer, in
 * which case the session closes itself with 4009 */
extern bool rtsub_session_send(RtsubSession *session, const char *data, size_t len);

/* the session's wire format */
extern RtsubFormat rtsub_session_format(RtsubSession *session);

/* ---- provided by evaluate.c, called by ws_server.c ---- */

/*
 * Open a subscription for a session from a parsed subscribe message.
 * Runs its own transaction.  On success returns NULL and sets *sub and
 * *live_from (the event position from which every committed change is
 * delivered: the subscribed message's "at"); on failure returns a protocol
 * error code (unknown_subscription, forbidden, bad_params, internal) and
 * sets *detail.  Must not raise an ERROR.
 */
extern const char *rtsub_subscription_open(RtsubSession *session,
										   const RtsubClientIdentity *who,
										   const RtsubClientMsg *msg,
										   RtsubSubscription **sub,
										   XLogRecPtr *live_from,
										   char **detail);

/* close a subscription (unsubscribe, or its session closed); never raises */
extern void rtsub_subscription_close(RtsubSubscription *sub);

#endif							/* RTSUB_SESSION_H */
