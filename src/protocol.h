/*-------------------------------------------------------------------------
 *
 * protocol.h
 *	  The client protocol's messages (docs/protocol.md): parsing what
 *	  clients send, in JSON or MessagePack, and building what the server
 *	  sends, through the format-blind RtsubWriter.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_PROTOCOL_H
#define RTSUB_PROTOCOL_H

#include "postgres.h"

#include "lib/stringinfo.h"

#include "encode.h"

/* error codes returned by the parser (docs/protocol.md, "Error codes") */
#define RTSUB_ERR_BAD_MESSAGE	"bad_message"
#define RTSUB_ERR_UNKNOWN_TYPE	"unknown_type"
#define RTSUB_ERR_BAD_FIELD		"bad_field"

/* limits enforced by the parser */
#define RTSUB_PROTO_MAX_INPUT		(64 * 1024 * 1024)	/* bytes, hard cap */
#define RTSUB_PROTO_MAX_DEPTH		32	/* nesting of maps and arrays */
#define RTSUB_PROTO_MAX_ID			64	/* bytes, printable ASCII */
#define RTSUB_PROTO_MAX_SUBSCRIPTION 128	/* bytes */
#define RTSUB_PROTO_MAX_TOKEN		16384	/* bytes */
#define RTSUB_PROTO_MAX_EVENT		64	/* bytes: resume.epoch, resume.after */
#define RTSUB_PROTO_MAX_DETAIL		256 /* bytes of an error detail */

typedef enum RtsubMsgType
{
	RTSUB_MSG_SUBSCRIBE,
	RTSUB_MSG_UNSUBSCRIBE,
	RTSUB_MSG_PING,
	RTSUB_MSG_REFRESH,
	RTSUB_MSG_AUTH
} RtsubMsgType;

/*
 * A parsed client message.  Strings are palloc'd, NUL-terminated, valid
 * UTF-8 without NUL bytes; fields that do not apply to the type, or were
 * absent (or null), are NULL / their defaults.
 */
typedef struct RtsubClientMsg
{
	RtsubMsgType type;
	char	   *id;				/* subscribe/unsubscribe handle, 1-64 bytes of
								 * printable ASCII */
	char	   *subscription;	/* subscribe: name, 1-128 bytes */
	char	   *params_json;	/* subscribe: params as canonical JSON text
								 * (compact, keys sorted bytewise, no
								 * duplicates), or NULL when absent */
	bool		snapshot;		/* default false */
	int			chunk_rows;		/* 1-100000, default 1000 */
	int			chunk_bytes;	/* 1024-16777216, default 1048576 */
	char	   *resume_epoch;	/* resume.epoch, or NULL */
	char	   *resume_after;	/* resume.after (an event id), or NULL */
	int			batch_size;		/* 1-1000, default 1 */
	int			throttle_ms;	/* 0-10000, default 0 */
	bool		include_metadata;	/* default false */
	int			priority;		/* 0-9, default 5 */
	char	   *nonce;			/* ping: the nonce as JSON text, or NULL */
	char	   *token;			/* refresh/auth: 1-16384 bytes */
} RtsubClientMsg;

extern const char *rtsub_parse_client_message(const char *data, size_t len,
											  RtsubFormat format,
											  RtsubClientMsg *msg,
											  char **detail);
extern const char *rtsub_msg_type_name(RtsubMsgType type);

/* what the welcome message tells a client */
typedef struct RtsubWelcome
{
	const char *server;			/* e.g. "rtsub/0.1" */
	const char *epoch;
	const char *role;
	int64		exp;			/* token expiry, Unix seconds; < 0: null */
	int			heartbeat_ms;
	/* limits: */
	int			max_subscriptions;	/* maxSubscriptions */
	int			max_message_size;	/* maxMessageSize (bytes) */
	int			max_messages_per_second;	/* maxMessagesPerSecond (0: none) */
	int			max_send_buffer;	/* maxSendBuffer (bytes) */
} RtsubWelcome;

/* each appends one complete message to out */
extern void rtsub_msg_welcome(StringInfo out, RtsubFormat f, const RtsubWelcome *wel);
extern void rtsub_msg_subscribed(StringInfo out, RtsubFormat f, const char *id,
								 const char *at, const char *epoch,
								 bool snapshot, bool resumed);
extern void rtsub_msg_live(StringInfo out, RtsubFormat f, const char *id,
						   const char *at, const char *epoch);
extern void rtsub_msg_unsubscribed(StringInfo out, RtsubFormat f, const char *id);
extern void rtsub_msg_pong(StringInfo out, RtsubFormat f, const char *nonce_json);
extern void rtsub_msg_refreshed(StringInfo out, RtsubFormat f, int64 exp);
extern void rtsub_msg_error(StringInfo out, RtsubFormat f, const char *code,
							const char *message, const char *ref);
extern void rtsub_msg_heartbeat(StringInfo out, RtsubFormat f, const char *at);
extern void rtsub_msg_reset(StringInfo out, RtsubFormat f, const char *id,
							const char *reason);

#endif							/* RTSUB_PROTOCOL_H */
