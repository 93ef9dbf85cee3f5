/*-------------------------------------------------------------------------
 *
 * session.c
 *	  Client sessions of the rtsub server: the WebSocket endpoint /v1/ws and
 *	  the Server-Sent Events endpoint /v1/sse (docs/protocol.md).  Owns the
 *	  handshake checks (path, subprotocol, Origin, token), each session's
 *	  state (identity, subscriptions, receive buffer, send queue, rate
 *	  limit), the protocol messages, and the timers (authentication
 *	  deadline, token expiry, heartbeats).  ws_server.c owns the
 *	  libwebsockets context and routes the WebSocket callbacks, and the HTTP
 *	  callbacks of /v1/sse, here.
 *
 *	  SSE.  An SSE stream is a session of kind SESSION_SSE on an HTTP
 *	  connection: always JSON, one subscription opened from the request's
 *	  query, no client messages.  rtsub_session_send() frames each protocol
 *	  message as an SSE event (event: <type>, id: <event id> for changes,
 *	  data: the JSON), so the subscription engine sends to both kinds alike.
 *	  Ending a stream writes a last `error` event (where there is a reason
 *	  to tell) and closes the connection once it is flushed.
 *
 *	  Everything runs in the server worker's one thread: lws callbacks inside
 *	  rtsub_ws_service(), and rtsub_session_send() called by the subscription
 *	  engine (evaluate.c) from the worker loop.  No PostgreSQL error may
 *	  longjmp through lws, so every callback catches errors: one failing
 *	  message answers `error` code `internal` and the session goes on; other
 *	  failures close that one connection.
 *
 *	  Handshake.  lws 4.1 offers no callback before the upgrade that may
 *	  answer with an HTTP status, except LWS_CALLBACK_HTTP_CONFIRM_UPGRADE,
 *	  which is not implemented (CVE-2025-11677).  The checks therefore run in
 *	  LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION, before lws writes its 101
 *	  response: a refusal writes a complete HTTP response (status, JSON error
 *	  body, Connection: close) straight to the socket and returns nonzero,
 *	  after which lws closes the connection without writing anything.
 *
 *	  Memory.  A session lives in its own memory context; each handled
 *	  message, handshake and timer tick uses a scratch context reset after
 *	  it.  Queued messages are malloc'd with LWS_PRE bytes of headroom.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <libwebsockets.h>

#include "access/xact.h"
#include "access/xlogdefs.h"
#include "common/jsonapi.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "audit.h"
#include "auth_jwt.h"
#include "config.h"
#include "protocol.h"
#include "session.h"
#include "shmem.h"
#include "window.h"
#include "worker.h"
#include "ws_server.h"

#define WS_PATH				"/v1/ws"
#define SSE_SUB_ID			"sse"	/* the id of an SSE stream's subscription */
#define SERVER_NAME			"rtsub/0.1"
#define AUTH_TIMEOUT_MS		5000	/* for the first message `auth` */
#define TICK_US				(250 * 1000)	/* timer resolution */
#define MAX_WRITES_PER_CALLBACK 64	/* messages per writable callback */

/*
 * WebSocket messages written through lws (with permessage-deflate, and
 * large ones) go out in fragments of at most this many bytes: lws's
 * deflate output buffer is 1 kB (PMD_TX_BUF_PWR2 10), and a fragment whose
 * compressed form does not fit would leave the extension "draining", which
 * lws 4.1 does not let a writer continue from safely.  Deflate's worst
 * case adds a few bytes per block and flush, hence the margin.
 */
#define WS_FRAGMENT 960

/* a client that reads nothing for this long while its queue is full is closed */
#define SLOW_CONSUMER_MS 5000
#define RATE_STREAK_CLOSE	3	/* consecutive seconds over the rate: 4008 */
#define CLOSE_ACK_TIMEOUT_S	2	/* wait for the client's close after ours */
#define SSE_PEEK_TICKS		4	/* look for closed SSE clients every 4 ticks */

/*
 * lws_write()'s close-frame type: LWS_WRITE_CLOSE is private in lws 4.1
 * (lws-write.h reserves its value 4 "handled by lws_close_reason()")
 */
#define LWS_WRITE_CLOSE_FRAME ((enum lws_write_protocol) 4)

/* close codes (docs/protocol.md) */
#define CLOSE_GOING_AWAY	1001
#define CLOSE_TOO_BIG		1009
#define CLOSE_INTERNAL		1011
#define CLOSE_PROTOCOL		4400
#define CLOSE_AUTH			4401
#define CLOSE_RATE			4008
#define CLOSE_SLOW			4009
#define CLOSE_CLIENT_GONE	0		/* SSE: the client closed first */

/* one queued message */
typedef struct SendItem
{
	dlist_node	node;
	TimestampTz commit_time;	/* of the change it carries, or 0 */
	size_t		len;
	unsigned char buf[FLEXIBLE_ARRAY_MEMBER];	/* LWS_PRE + len bytes */
} SendItem;

/* one open subscription of a session */
typedef struct SessionSub
{
	dlist_node	node;
	char	   *id;
	char	   *name;
	RtsubSubscription *sub;
} SessionSub;

typedef enum SessionKind
{
	SESSION_WS,					/* a WebSocket connection (/v1/ws) */
	SESSION_SSE					/* a Server-Sent Events stream (/v1/sse) */
} SessionKind;

struct RtsubSession
{
	dlist_node	node;			/* in sessions, once established */
	struct lws *wsi;			/* NULL once lws forgot the connection */
	MemoryContext cxt;			/* holds the session and its strings */
	SessionKind kind;
	RtsubFormat format;			/* SSE: always JSON */
	char		remote[64];		/* peer address, for the audit log */
	bool		established;
	bool		authenticated;
	bool		closing;		/* a close is pending: send nothing more */
	bool		close_sent;		/* the close frame (SSE: the last event) is
								 * written */
	bool		end_when_drained;	/* SSE: end the stream once the queue
									 * is written (its subscription ended) */
	SendItem   *partial;		/* a message partly written, in fragments */
	size_t		partial_off;	/* how much of it */
	bool		frames_raw;		/* WebSocket without extensions: queued
								 * messages are framed here and written
								 * several per send (see drain_frames) */
	int			close_code;
	char		close_reason[124];

	/* identity (in cxt) */
	char	   *role;
	char	   *user;			/* the token's sub claim, or NULL */
	char	   *claims_json;
	int64		exp;			/* token expiry (Unix s), PG_INT64_MIN: none */

	int64		auth_deadline_ms;	/* unauthenticated: when to give up */
	int64		last_sent_ms;	/* when a message was last queued */
	int64		last_written_ms;	/* when the socket last took bytes */

	/* the message being received (malloc'd) */
	bool		in_message;
	char	   *rx;
	size_t		rx_len;
	size_t		rx_cap;

	/* send queue: one list per priority, the highest drained first */
	dlist_head	queue[RTSUB_PRIORITIES];
	size_t		queued_bytes;
	int			queued_messages;

	/* for rtsub.connections */
	uint64		serial;			/* the connection's id */
	TimestampTz connected_at;
	uint64		messages_sent;
	uint64		bytes_sent;

	/* subscriptions */
	dlist_head	subs;
	int			nsubs;

	/* rate limit: messages in the current second */
	int64		rate_second;
	int			rate_count;
	bool		rate_over;		/* the current second is over the limit */
	int			rate_streak;	/* consecutive seconds over the limit */
};

/* lws's per-connection user data of the WebSocket protocols */
typedef struct WsPss
{
	RtsubSession *session;
} WsPss;

static dlist_head sessions = DLIST_STATIC_INIT(sessions);
static uint64 session_serial = 0;	/* ids of sessions, for rtsub.connections */
static TimestampTz event_commit_time = 0;	/* see rtsub_session_event_time */
static int	nsessions = 0;			/* established sessions */
static MemoryContext scratch_cxt = NULL;
static lws_sorted_usec_list_t tick_sul;
static struct lws_context *tick_context = NULL;
static bool tick_scheduled = false;
static uint64 tick_count = 0;

/* the JWT settings the keys were loaded from (see auth_keys_current) */
static char *seen_jwt_settings = NULL;

static void start_close(RtsubSession *s, int code, const char *reason);
static void schedule_tick(struct lws_context *context);

/* ----------------------------------------------------------------------
 * small helpers
 * ----------------------------------------------------------------------
 */

/* wall-clock time in milliseconds since 1970 */
static int64
now_unix_ms(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* the scratch context for one callback's temporary allocations */
static MemoryContext
scratch(void)
{
	if (scratch_cxt == NULL)
		scratch_cxt = AllocSetContextCreate(TopMemoryContext,
											"rtsub session scratch",
											ALLOCSET_DEFAULT_SIZES);
	return scratch_cxt;
}

/* "rtsub: ..." LOG line when rtsub.audit_log is on */
static void
audit(const char *fmt,...)
pg_attribute_printf(1, 2);

static void
audit(const char *fmt,...)
{
	char		buf[1024];
	va_list		ap;

	if (!rtsub_audit_log && !rtsub_audit_table)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (rtsub_audit_log)
		ereport(LOG, (errmsg_internal("rtsub: %s", buf), errhidestmt(true)));
	if (rtsub_audit_table)
		rtsub_audit_record(buf);
}

/* count in a shared counter */
static inline void
count(pg_atomic_uint64 *counter, int64 delta)
{
	if (rtsub_shared == NULL)
		return;
	if (delta >= 0)
		pg_atomic_fetch_add_u64(counter, (uint64) delta);
	else
		pg_atomic_fetch_sub_u64(counter, (uint64) -delta);
}

/*
 * Reload the JWT keys when their settings changed (after SIGHUP the worker
 * has new values; auth_jwt.c loads its keys only once by itself).
 */
static void
auth_keys_current(void)
{
	char	   *now = psprintf("%s\x1f%d\x1f%s\x1f%s",
							   rtsub_jwt_secret ? rtsub_jwt_secret : "",
							   (int) rtsub_jwt_secret_base64,
							   rtsub_jwt_public_key_file ? rtsub_jwt_public_key_file : "",
							   rtsub_jwt_algorithms ? rtsub_jwt_algorithms : "");

	if (seen_jwt_settings != NULL && strcmp(now, seen_jwt_settings) == 0)
	{
		pfree(now);
		return;
	}
	rtsub_auth_reload();
	if (seen_jwt_settings)
	{
		explicit_bzero(seen_jwt_settings, strlen(seen_jwt_settings));
		pfree(seen_jwt_settings);
	}
	seen_jwt_settings = MemoryContextStrdup(TopMemoryContext, now);
	explicit_bzero(now, strlen(now));
	pfree(now);
}

/* whether a role of that name exists (a short transaction when needed) */
static bool
role_exists(const char *role)
{
	MemoryContext old = CurrentMemoryContext;
	bool		started = false;
	bool		exists;

	if (strlen(role) >= NAMEDATALEN)
		return false;
	if (!IsTransactionState())
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		started = true;
	}
	exists = OidIsValid(get_role_oid(role, true));
	if (started)
		CommitTransactionCommand();
	MemoryContextSwitchTo(old);
	return exists;
}

/*
 * Verify a token and that its role exists.  NULL on success (*tok filled),
 * else the error code, with *message a description.
 */
static const char *
authenticate(const char *token, RtsubToken *tok, const char **message)
{
	RtsubAuthError err;
	const char *detail = NULL;

	auth_keys_current();
	err = rtsub_verify_jwt(token, now_unix_ms() / 1000, tok, &detail);
	if (err != RTSUB_AUTH_OK)
	{
		*message = detail ? detail : rtsub_auth_error_message(err);
		return rtsub_auth_error_code(err);
	}
	if (!role_exists(tok->role))
	{
		*message = "the token's role does not exist";
		return "role_not_found";
	}
	*message = NULL;
	return NULL;
}

/* ----------------------------------------------------------------------
 * the handshake
 * ----------------------------------------------------------------------
 */

/* a header's value (palloc'd), or NULL when absent */
static char *
header(struct lws *wsi, enum lws_token_indexes h)
{
	int			n = lws_hdr_total_length(wsi, h);
	char	   *buf;

	if (n <= 0)
		return NULL;
	buf = palloc(n + 1);
	if (lws_hdr_copy(wsi, buf, n + 1, h) < 0)
		return NULL;
	return buf;
}

/*
 * Write a complete HTTP error response straight to the socket (lws has
 * not written anything yet and closes the connection after us).
 */
static void
refuse(struct lws *wsi, int status, const char *status_text,
	   const char *code, const char *message)
{
	StringInfoData body;
	StringInfoData resp;
	lws_sockfd_type fd = lws_get_socket_fd(wsi);
	size_t		off = 0;
	char		peer[64];

	initStringInfo(&body);
	appendStringInfo(&body, "{\"error\":{\"code\":\"%s\",\"message\":", code);
	escape_json(&body, message);
	appendStringInfoString(&body, "}}");

	initStringInfo(&resp);
	appendStringInfo(&resp,
					 "HTTP/1.1 %d %s\r\n"
					 "server: rtsub\r\n"
					 "content-type: application/json\r\n"
					 "content-length: %d\r\n"
					 "cache-control: no-store\r\n"
					 "x-content-type-options: nosniff\r\n"
					 "connection: close\r\n",
					 status, status_text, body.len);
	if (status == 401)
		appendStringInfo(&resp, "www-authenticate: Bearer error=\"invalid_token\"\r\n");
	appendStringInfo(&resp, "\r\n%s", body.data);

	while (fd >= 0 && off < (size_t) resp.len)
	{
		ssize_t		n = send(fd, resp.data + off, resp.len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;				/* the client is gone or not reading: drop it */
		off += n;
	}
	if (rtsub_shared)
	{
		pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, off);
		pg_atomic_fetch_add_u64(&rtsub_shared->ws_sessions_refused, 1);
	}
	lws_get_peer_simple(wsi, peer, sizeof(peer));
	audit("connection refused from %s: %d %s: %s", peer, status, code, message);
}

/* whether the request's path is the WebSocket endpoint */
static bool
path_is_ws(struct lws *wsi)
{
	char	   *uri = header(wsi, WSI_TOKEN_GET_URI);

	return uri != NULL && strcmp(uri, WS_PATH) == 0;
}

/*
 * An origin "scheme://host[:port]" normalized for comparison: lower case,
 * without the scheme's default port.
 */
static char *
normalize_origin(const char *origin)
{
	char	   *s = pstrdup(origin);
	char	   *p;
	size_t		n;

	for (p = s; *p; p++)
		*p = pg_ascii_tolower((unsigned char) *p);
	n = strlen(s);
	while (n > 0 && s[n - 1] == '/')
		s[--n] = '\0';
	if (strncmp(s, "http://", 7) == 0 && n > 3 && strcmp(s + n - 3, ":80") == 0)
		s[n - 3] = '\0';
	else if (strncmp(s, "https://", 8) == 0 && n > 4 && strcmp(s + n - 4, ":443") == 0)
		s[n - 4] = '\0';
	return s;
}

/*
 * Whether the request's Origin is allowed by rtsub.allowed_origins.
 * Requests without Origin (not from a browser) are always allowed; "*"
 * allows every origin; an empty setting allows only the server's own host
 * (the Origin's host[:port] equals the Host header).
 */
static bool
origin_allowed(struct lws *wsi, char **origin_out)
{
	char	   *origin = header(wsi, WSI_TOKEN_ORIGIN);
	char	   *norm;
	char	   *raw;
	List	   *items = NIL;
	ListCell   *lc;

	*origin_out = origin;
	if (origin == NULL)
		return true;
	norm = normalize_origin(origin);

	if (rtsub_allowed_origins == NULL || rtsub_allowed_origins[0] == '\0')
	{
		char	   *host = header(wsi, WSI_TOKEN_HOST);
		char	   *sep = strstr(norm, "://");

		if (host == NULL || sep == NULL)
			return false;
		/* compare host[:port] with the Host header, both normalized */
		return strcmp(normalize_origin(psprintf("%.*s%s", (int) (sep - norm + 3), norm, host)),
					  norm) == 0;
	}

	raw = pstrdup(rtsub_allowed_origins);
	if (!SplitGUCList(raw, ',', &items))
		return false;
	foreach(lc, items)
	{
		const char *item = (const char *) lfirst(lc);

		if (strcmp(item, "*") == 0 || strcmp(normalize_origin(item), norm) == 0)
			return true;
	}
	return false;
}

/* the handshake's token: Authorization: Bearer, else ?access_token= */
static char *
handshake_token(struct lws *wsi, bool *not_bearer)
{
	char	   *auth = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	char		buf[8192];
	const char *arg;

	*not_bearer = false;
	if (auth != NULL)
	{
		char	   *p = auth;

		while (*p == ' ' || *p == '\t')
			p++;
		if (pg_strncasecmp(p, "bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
		{
			*not_bearer = true;
			return NULL;
		}
		p += 7;
		while (*p == ' ' || *p == '\t')
			p++;
		/* trailing blanks */
		{
			size_t		n = strlen(p);

			while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
				p[--n] = '\0';
		}
		return p;
	}
	arg = lws_get_urlarg_by_name(wsi, "access_token=", buf, sizeof(buf));
	if (arg != NULL)
		return pstrdup(arg);
	return NULL;
}

/* a new session (not yet established) for wsi */
static RtsubSession *
session_create(struct lws *wsi, RtsubFormat format)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext,
											  "rtsub session",
											  0, 1024, 1024);	/* ~1.6 kB used */
	RtsubSession *s = MemoryContextAllocZero(cxt, sizeof(RtsubSession));

	s->cxt = cxt;
	s->wsi = wsi;
	s->format = format;
	s->exp = PG_INT64_MIN;
	s->serial = ++session_serial;
	s->connected_at = GetCurrentTimestamp();
	for (int p = 0; p < RTSUB_PRIORITIES; p++)
		dlist_init(&s->queue[p]);
	dlist_init(&s->subs);
	lws_get_peer_simple(wsi, s->remote, sizeof(s->remote));
	return s;
}

/* take the identity of a verified token */
static void
session_set_identity(RtsubSession *s, const RtsubToken *tok)
{
	if (s->role == NULL)
		s->role = MemoryContextStrdup(s->cxt, tok->role);
	if (s->user == NULL && tok->sub != NULL)
		s->user = MemoryContextStrdup(s->cxt, tok->sub);
	if (s->claims_json)
		pfree(s->claims_json);
	s->claims_json = MemoryContextStrdup(s->cxt, tok->claims_json);
	s->exp = tok->exp;
	s->authenticated = true;
}

/*
 * LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION of the two WebSocket protocols:
 * path, Origin, token.  0 accepts (the session is created); nonzero
 * refuses (a response was written).
 */
static int
filter_connection(struct lws *wsi, WsPss *pss, RtsubFormat format)
{
	char	   *origin;
	char	   *token;
	bool		not_bearer;
	RtsubSession *s;

	if (!path_is_ws(wsi))
	{
		refuse(wsi, 404, "Not Found", "not_found", "no such resource");
		return -1;
	}
	if (!origin_allowed(wsi, &origin))
	{
		refuse(wsi, 403, "Forbidden", "origin_not_allowed",
			   psprintf("origin \"%s\" is not allowed", origin));
		return -1;
	}
	token = handshake_token(wsi, &not_bearer);
	if (not_bearer)
	{
		count(&rtsub_shared->ws_auth_failures, 1);
		refuse(wsi, 401, "Unauthorized", "token_malformed",
			   "the Authorization header is not a Bearer token");
		return -1;
	}

	s = session_create(wsi, format);
	if (token != NULL)
	{
		RtsubToken tok;
		const char *message;
		const char *code = authenticate(token, &tok, &message);

		if (code != NULL)
		{
			MemoryContextDelete(s->cxt);
			count(&rtsub_shared->ws_auth_failures, 1);
			refuse(wsi, 401, "Unauthorized", code, message);
			return -1;
		}
		session_set_identity(s, &tok);
	}
	pss->session = s;
	return 0;
}

/*
 * An upgrade bound to the HTTP protocol: the client offered no subprotocol
 * (lws binds those to its default protocol).  Always refused.
 */
int
rtsub_session_refuse_upgrade(struct lws *wsi)
{
	MemoryContext old = MemoryContextSwitchTo(scratch());
	volatile int rc = -1;

	PG_TRY();
	{
		if (!path_is_ws(wsi))
			refuse(wsi, 404, "Not Found", "not_found", "no such resource");
		else
			refuse(wsi, 400, "Bad Request", "subprotocol_required",
				   "request the WebSocket subprotocol rtsub.v1.json or rtsub.v1.msgpack");
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	return rc;
}

/* ----------------------------------------------------------------------
 * sending
 * ----------------------------------------------------------------------
 */

/* free the queued messages */
static void
drop_queue(RtsubSession *s)
{
	dlist_mutable_iter it;

	for (int p = 0; p < RTSUB_PRIORITIES; p++)
		dlist_foreach_modify(it, &s->queue[p])
		{
			SendItem   *item = dlist_container(SendItem, node, it.cur);

			dlist_delete(&item->node);
			free(item);
		}
	if (s->partial)
		free(s->partial);
	s->partial = NULL;
	s->partial_off = 0;
	s->queued_bytes = 0;
	s->queued_messages = 0;
}

/*
 * Queue bytes as they go on the wire (copied): a WebSocket message, or SSE
 * text.  False if the session is closing, or when the queue would pass
 * rtsub.max_send_buffer: then the session closes as a slow consumer.
 */
static bool
enqueue(RtsubSession *s, const char *data, size_t len, int priority)
{
	SendItem   *item;

	if (s == NULL || s->closing || s->wsi == NULL)
		return false;
	/*
	 * the queue may pass the limit by one message (a large change is
	 * queued whole); a message that finds it already past the limit means
	 * the client does not keep up
	 */
	if (s->queued_bytes > (size_t) rtsub_max_send_buffer)
	{
		count(&rtsub_shared->ws_slow_consumers, 1);
		audit("slow consumer closed: %s (role %s%s): more than %d bytes queued",
			  s->remote, s->role ? s->role : "-",
			  s->kind == SESSION_SSE ? ", SSE" : "", rtsub_max_send_buffer);
		start_close(s, CLOSE_SLOW, "slow_consumer");
		return false;
	}
	item = malloc(offsetof(SendItem, buf) + LWS_PRE + len);
	if (item == NULL)
	{
		start_close(s, CLOSE_INTERNAL, "out of memory");
		return false;
	}
	item->len = len;
	item->commit_time = event_commit_time;
	memcpy(item->buf + LWS_PRE, data, len);
	dlist_push_tail(&s->queue[priority], &item->node);
	s->queued_bytes += len;
	s->last_sent_ms = now_unix_ms();
	/*
	 * ask for a writable callback when the queue stops being empty; while
	 * it is not, one is pending (drain_queue asks again), and asking costs
	 * an epoll_ctl
	 */
	if (s->queued_messages++ == 0)
	{
		s->last_written_ms = s->last_sent_ms;	/* the stall clock starts */
		lws_callback_on_writable(s->wsi);
	}
	return true;
}

/*
 * From a JSON protocol message (an object whose first key is "type", as
 * protocol.c and evaluate.c build them): its type, and the event id an SSE
 * event carries as its id: field — "event" of the message itself (change,
 * message) or of the last element of "events" (changes, where the event
 * objects are at depth 3).  Strings that are not found are left empty.
 * Both buffers have room for RTSUB_PROTO_MAX_EVENT bytes and the NUL.
 */
static void
sse_scan(const char *p, size_t len, char *type, char *event)
{
	int			depth = 0;
	int			event_depth = 1;
	const char *key = NULL;
	size_t		keylen = 0;
	int			keydepth = -1;
	bool		after_colon = false;
	size_t		i = 0;

	type[0] = event[0] = '\0';
	while (i < len)
	{
		char		c = p[i];

		if (c == '"')
		{
			size_t		start = ++i;
			size_t		slen;

			while (i < len && p[i] != '"')
				i += (p[i] == '\\') ? 2 : 1;
			if (i >= len)
				return;
			slen = i - start;
			i++;
			if (after_colon)
			{
				/* the string value of key */
				after_colon = false;
				if (slen > RTSUB_PROTO_MAX_EVENT)
					continue;
				if (keydepth == 1 && keylen == 4 && memcmp(key, "type", 4) == 0)
				{
					memcpy(type, p + start, slen);
					type[slen] = '\0';
					if (strcmp(type, "changes") == 0)
						event_depth = 3;
				}
				else if (keydepth == event_depth &&
						 ((keylen == 5 && memcmp(key, "event", 5) == 0) ||
						  (keylen == 2 && memcmp(key, "at", 2) == 0 &&
						   strcmp(type, "live") == 0)))
				{
					memcpy(event, p + start, slen);
					event[slen] = '\0';
					if (event_depth == 1)
						return;		/* the type came first: done */
				}
				continue;
			}
			/* a key when a colon follows */
			{
				size_t		j = i;

				while (j < len && (p[j] == ' ' || p[j] == '\t' ||
								   p[j] == '\n' || p[j] == '\r'))
					j++;
				if (j < len && p[j] == ':')
				{
					key = p + start;
					keylen = slen;
					keydepth = depth;
					after_colon = true;
					i = j + 1;
				}
			}
			continue;
		}
		if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			after_colon = false;
		i++;
	}
}

/*
 * One protocol message (JSON) as an SSE event: "id:" (the event id, for
 * change, changes and message), "event:" (the message's type), and the
 * message as "data:".  rtsub's JSON never contains a raw line break
 * (encode_json.c), but one would start a new data: line, as SSE requires.
 */
static void
sse_event(StringInfo out, const char *data, size_t len)
{
	char		type[RTSUB_PROTO_MAX_EVENT + 1];
	char		event[RTSUB_PROTO_MAX_EVENT + 1];
	size_t		start = 0;
	size_t		i;

	sse_scan(data, len, type, event);
	if (event[0] != '\0' &&
		(strcmp(type, "change") == 0 || strcmp(type, "changes") == 0 ||
		 strcmp(type, "message") == 0 || strcmp(type, "live") == 0))
		appendStringInfo(out, "id: %s@%s\n", event, rtsub_window_epoch());
	appendStringInfo(out, "event: %s\n", type[0] ? type : "message");
	for (i = 0; i <= len; i++)
	{
		if (i < len && data[i] != '\n' && data[i] != '\r')
			continue;
		appendStringInfoString(out, "data: ");
		appendBinaryStringInfo(out, data + start, (int) (i - start));
		appendStringInfoChar(out, '\n');
		if (i + 1 < len && data[i] == '\r' && data[i + 1] == '\n')
			i++;
		start = i + 1;
	}
	appendStringInfoChar(out, '\n');
}

/* queue one message with a priority; see session.h */
bool
rtsub_session_send_priority(RtsubSession *s, const char *data, size_t len,
							int priority)
{
	StringInfoData buf;
	bool		ok;

	priority = Max(0, Min(priority, RTSUB_PRIORITIES - 1));
	if (s == NULL || s->kind != SESSION_SSE)
		return enqueue(s, data, len, priority);
	if (s->closing || s->wsi == NULL)
		return false;
	initStringInfo(&buf);
	sse_event(&buf, data, len);
	ok = enqueue(s, buf.data, buf.len, priority);
	pfree(buf.data);
	return ok;
}

/* queue one message at the default priority; see session.h */
bool
rtsub_session_send(RtsubSession *s, const char *data, size_t len)
{
	return rtsub_session_send_priority(s, data, len, RTSUB_DEFAULT_PRIORITY);
}

/* the queued message that next_item() returns next, left in the queue */
static SendItem *
peek_item(RtsubSession *s)
{
	for (int p = RTSUB_PRIORITIES - 1; p >= 0; p--)
		if (!dlist_is_empty(&s->queue[p]))
			return dlist_container(SendItem, node, dlist_head_node(&s->queue[p]));
	return NULL;
}

/* the queued message to write next (highest priority first), or NULL */
static SendItem *
next_item(RtsubSession *s)
{
	for (int p = RTSUB_PRIORITIES - 1; p >= 0; p--)
		if (!dlist_is_empty(&s->queue[p]))
			return dlist_container(SendItem, node, dlist_pop_head_node(&s->queue[p]));
	return NULL;
}

/* the session's wire format */
RtsubFormat
rtsub_session_format(RtsubSession *s)
{
	return s->format;
}

/* bytes queued and not yet written; see session.h */
size_t
rtsub_session_queued(RtsubSession *s)
{
	return s->queued_bytes;
}

/*
 * see session.h: a subscription of the session waits for its queue to
 * drain; a client whose socket took nothing for SLOW_CONSUMER_MS while
 * messages waited is closed as a slow consumer (4009).  True if closed.
 */
bool
rtsub_session_check_stalled(RtsubSession *s)
{
	int64		now = now_unix_ms();

	if (s->closing || s->queued_messages == 0 ||
		now - s->last_written_ms < SLOW_CONSUMER_MS)
		return false;
	count(&rtsub_shared->ws_slow_consumers, 1);
	audit("slow consumer closed: %s (role %s%s): nothing read for %d ms with %zu bytes queued",
		  s->remote, s->role ? s->role : "-",
		  s->kind == SESSION_SSE ? ", SSE" : "", SLOW_CONSUMER_MS, s->queued_bytes);
	start_close(s, CLOSE_SLOW, "slow_consumer");
	return true;
}

/* queue a built message */
static void
send_buf(RtsubSession *s, StringInfo buf)
{
	(void) rtsub_session_send(s, buf->data, buf->len);
}

/* queue an error message */
static void
send_error(RtsubSession *s, const char *code, const char *message, const char *ref)
{
	StringInfoData buf;

	initStringInfo(&buf);
	rtsub_msg_error(&buf, s->format, code, message ? message : code, ref);
	send_buf(s, &buf);
}

/* queue the welcome */
static void
send_welcome(RtsubSession *s)
{
	StringInfoData buf;
	RtsubWelcome wel;

	wel.server = SERVER_NAME;
	rtsub_worker_open_stream_now();	/* the epoch is the stream's */
	wel.epoch = rtsub_window_is_open() ? rtsub_window_epoch() :
		(rtsub_shared ? rtsub_shared->epoch : "0");
	wel.role = s->role;
	wel.exp = (s->exp == PG_INT64_MIN) ? -1 : s->exp;
	wel.heartbeat_ms = rtsub_heartbeat_interval;
	wel.max_subscriptions = rtsub_max_subscriptions_per_connection;
	wel.max_message_size = rtsub_max_message_size;
	wel.max_messages_per_second = rtsub_max_messages_per_second;
	wel.max_send_buffer = rtsub_max_send_buffer;
	initStringInfo(&buf);
	rtsub_msg_welcome(&buf, s->format, &wel);
	send_buf(s, &buf);
}

/*
 * Close the session with code and reason: whatever is queued is dropped,
 * the close frame goes out on the next writable callback.
 */
static void
start_close(RtsubSession *s, int code, const char *reason)
{
	if (s->closing)
		return;
	s->closing = true;
	s->close_code = code;
	strlcpy(s->close_reason, reason, sizeof(s->close_reason));	/* <= 123 bytes */
	drop_queue(s);
	if (s->wsi)
		lws_callback_on_writable(s->wsi);
}

/* a queued message is written: it leaves the queue and is counted */
static void
count_written(RtsubSession *s, const SendItem *item)
{
	s->queued_bytes -= item->len;
	s->queued_messages--;
	s->messages_sent++;
	s->bytes_sent += item->len;
	if (rtsub_shared)
	{
		pg_atomic_fetch_add_u64(&rtsub_shared->messages_sent, 1);
		pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, item->len);
	}
}

/*
 * write queued messages while the socket takes them (at most
 * MAX_WRITES_PER_CALLBACK per callback, n already written); -1 if the
 * connection failed
 */
static int
drain_queue(RtsubSession *s, struct lws *wsi, enum lws_write_protocol kind, int n)
{
	/*
	 * WebSocket messages through an extension go in fragments (see
	 * WS_FRAGMENT); without one, and SSE text, whole
	 */
	bool		fragment = !s->frames_raw &&
		(kind == LWS_WRITE_TEXT || kind == LWS_WRITE_BINARY);

	while (s->queued_messages > 0 && n < MAX_WRITES_PER_CALLBACK)
	{
		SendItem   *item = s->partial ? s->partial : next_item(s);
		size_t		off = s->partial ? s->partial_off : 0;
		size_t		piece = item->len - off;
		int			wp = kind;
		int			written;

		if (fragment && piece > WS_FRAGMENT)
			piece = WS_FRAGMENT;
		if (fragment)
			wp = (off == 0 ? kind : LWS_WRITE_CONTINUATION) |
				(off + piece < item->len ? LWS_WRITE_NO_FIN : 0);
		written = lws_write(wsi, item->buf + LWS_PRE + off, piece,
							(enum lws_write_protocol) wp);
		if (written < (int) piece)
		{
			if (s->partial == NULL)
				free(item);		/* else drop_queue frees it */
			return -1;			/* the connection failed */
		}
		n++;
		s->last_written_ms = now_unix_ms();
		if (off + piece < item->len)
		{
			/* more fragments of this message first, whatever comes */
			s->partial = item;
			s->partial_off = off + piece;
		}
		else
		{
			s->partial = NULL;
			s->partial_off = 0;
			count_written(s, item);
			if (item->commit_time != 0)
				rtsub_observe_latency(item->commit_time, GetCurrentTimestamp());
			free(item);
		}

		/*
		 * lws buffers what the socket did not take (and must not be given
		 * more then); checking that costs no syscall, unlike
		 * lws_send_pipe_choked()'s poll()
		 */
		if (lws_partial_buffered(wsi))
			break;
	}
	if (s->queued_messages > 0)
		lws_callback_on_writable(wsi);
	return 0;
}

/*
 * Write queued messages of a WebSocket session without extensions: framed
 * here (server frames are unmasked: FIN + opcode, the length in 1, 3 or 9
 * bytes) and written many per lws_write as raw bytes, so that a client
 * receiving many small messages costs one send() per up to
 * COALESCE_BYTES instead of one per message.  Messages larger than that
 * go through lws's own framing.  The frames of one lws_write are whole, so
 * lws's own writes (close, ping) can only come between frames.
 */
#define COALESCE_BYTES (64 * 1024)

static int
drain_frames(RtsubSession *s, struct lws *wsi, enum lws_write_protocol kind)
{
	static unsigned char *buf = NULL;
	int			writes = 0;

	if (buf == NULL)
	{
		buf = malloc(LWS_PRE + COALESCE_BYTES);
		if (buf == NULL)
			return drain_queue(s, wsi, kind, 0);
	}
	while (s->queued_messages > 0 && writes < MAX_WRITES_PER_CALLBACK)
	{
		size_t		len = 0;
		int			nframes = 0;
		SendItem   *item;
		int			ncommits = 0;
		TimestampTz commit_times[COALESCE_BYTES / 2];	/* frames are >= 2 bytes */

		while (s->queued_messages > 0 && (item = peek_item(s)) != NULL &&
			   (nframes == 0 || len + item->len + 10 <= COALESCE_BYTES))
		{
			unsigned char *p;

			if (item->len + 10 > COALESCE_BYTES)
			{
				if (nframes > 0)
					break;		/* write what is gathered first */
				return drain_queue(s, wsi, kind, writes);	/* a big one */
			}
			item = next_item(s);
			p = buf + LWS_PRE + len;
			*p++ = 0x80 | (kind == LWS_WRITE_BINARY ? 0x2 : 0x1);
			if (item->len < 126)
				*p++ = (unsigned char) item->len;
			else
			{
				*p++ = 126;
				*p++ = (unsigned char) (item->len >> 8);
				*p++ = (unsigned char) item->len;
			}
			memcpy(p, item->buf + LWS_PRE, item->len);
			len = (p + item->len) - (buf + LWS_PRE);
			count_written(s, item);
			if (item->commit_time != 0)
				commit_times[ncommits++] = item->commit_time;
			free(item);
			nframes++;
		}
		if (len == 0)
			break;
		if (lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_RAW) < (int) len)
			return -1;			/* the connection failed */
		s->last_written_ms = now_unix_ms();
		if (ncommits > 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			for (int i = 0; i < ncommits; i++)
				rtsub_observe_latency(commit_times[i], now);
		}
		writes++;
		if (lws_partial_buffered(wsi))
			break;
	}
	if (s->queued_messages > 0)
		lws_callback_on_writable(wsi);
	return 0;
}

/* LWS_CALLBACK_SERVER_WRITEABLE: the close frame, or queued messages */
static int
on_writeable(struct lws *wsi, RtsubSession *s)
{
	int			n = 0;
	enum lws_write_protocol kind = (s->format == RTSUB_FORMAT_MSGPACK) ?
		LWS_WRITE_BINARY : LWS_WRITE_TEXT;

	if (s->closing)
	{
		/*
		 * lws 4.1 drops the reason of lws_close_reason() when a writable
		 * callback returns nonzero, so the close frame is written here; the
		 * connection then waits for the client's close (which ends it, see
		 * LWS_CALLBACK_WS_PEER_INITIATED_CLOSE) for at most
		 * CLOSE_ACK_TIMEOUT_S.  Waiting, rather than closing the socket at
		 * once, keeps unread client data from turning the close into a TCP
		 * reset that would lose the close frame.
		 */
		if (!s->close_sent)
		{
			unsigned char frame[LWS_PRE + 125];
			size_t		rlen = strlen(s->close_reason);

			frame[LWS_PRE] = (unsigned char) (s->close_code >> 8);
			frame[LWS_PRE + 1] = (unsigned char) (s->close_code & 0xff);
			memcpy(frame + LWS_PRE + 2, s->close_reason, rlen);
			if (lws_write(wsi, frame + LWS_PRE, 2 + rlen, LWS_WRITE_CLOSE_FRAME) < 0)
				return -1;
			s->close_sent = true;

			/*
			 * A stopping server (1001) bounds the wait for all sessions at
			 * once (rtsub_ws_stop); a timeout per connection would cost
			 * lws 4.1 a sorted insert each, quadratic in the clients.
			 */
			if (s->close_code != CLOSE_GOING_AWAY)
				lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, CLOSE_ACK_TIMEOUT_S);
		}
		return 0;
	}

	if (s->frames_raw)
		return drain_frames(s, wsi, kind);
	return drain_queue(s, wsi, kind, n);
}

/*
 * The last event of an SSE stream that ends for reason (start_close's):
 * an `error` with the reason as its code; nothing when the server shuts
 * down (the client reconnects).  Appended to out; false when none.
 */
static bool
sse_last_event(RtsubSession *s, StringInfo out)
{
	StringInfoData msg;
	const char *code = s->close_reason;
	const char *message;

	if (s->close_code == CLOSE_GOING_AWAY || s->close_code == CLOSE_CLIENT_GONE)
		return false;
	if (s->close_code == CLOSE_INTERNAL)
		code = "internal";
	if (strcmp(s->close_reason, "token_expired") == 0)
		message = "the token expired: reconnect with a new token";
	else if (strcmp(s->close_reason, "slow_consumer") == 0)
		message = "the stream fell behind by more than rtsub.max_send_buffer bytes";
	else
		message = "the server ended the stream";
	initStringInfo(&msg);
	rtsub_msg_error(&msg, RTSUB_FORMAT_JSON, code, message, NULL);
	sse_event(out, msg.data, msg.len);
	pfree(msg.data);
	return true;
}

/*
 * LWS_CALLBACK_HTTP_WRITEABLE of an SSE stream: queued events, or the end
 * of the stream: the last event, then (on the next writable callback, once
 * lws has flushed it) closing the connection.
 */
static int
sse_on_writeable(struct lws *wsi, RtsubSession *s)
{
	int			n = 0;

	if (s->closing)
	{
		StringInfoData last;

		if (s->close_sent)
			return -1;
		s->close_sent = true;
		initStringInfo(&last);
		if (!sse_last_event(s, &last))
			return -1;
		{
			unsigned char *buf = palloc(LWS_PRE + last.len);

			memcpy(buf + LWS_PRE, last.data, last.len);
			if (lws_write(wsi, buf + LWS_PRE, last.len, LWS_WRITE_HTTP) < last.len)
				return -1;
		}
		if (rtsub_shared)
		{
			pg_atomic_fetch_add_u64(&rtsub_shared->messages_sent, 1);
			pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, last.len);
		}
		lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, CLOSE_ACK_TIMEOUT_S);
		lws_callback_on_writable(wsi);
		return 0;
	}

	if (drain_queue(s, wsi, LWS_WRITE_HTTP, n) < 0)
		return -1;
	if (s->end_when_drained && s->queued_messages == 0)
	{
		/* everything queued is written: end once lws has flushed it */
		s->closing = true;
		s->close_code = CLOSE_GOING_AWAY;
		s->close_sent = true;
		lws_callback_on_writable(wsi);
	}
	return 0;
}

/* ----------------------------------------------------------------------
 * receiving
 * ----------------------------------------------------------------------
 */

/* the subscription of a session with that id, or NULL */
static SessionSub *
find_sub(RtsubSession *s, const char *id)
{
	dlist_iter	it;

	dlist_foreach(it, &s->subs)
	{
		SessionSub *ss = dlist_container(SessionSub, node, it.cur);

		if (strcmp(ss->id, id) == 0)
			return ss;
	}
	return NULL;
}

/* the identity handed to the subscription engine */
static void
identity(RtsubSession *s, RtsubClientIdentity *who)
{
	who->role = s->role;
	who->claims_json = s->claims_json;
}

static void
handle_subscribe(RtsubSession *s, RtsubClientMsg *msg)
{
	RtsubClientIdentity who;
	RtsubSubscription *sub = NULL;
	char	   *detail = NULL;
	const char *code;
	SessionSub *ss;

	if (find_sub(s, msg->id) != NULL)
	{
		send_error(s, "duplicate_id",
				   psprintf("id \"%s\" is already in use on this connection", msg->id),
				   msg->id);
		return;
	}
	if (s->nsubs >= rtsub_max_subscriptions_per_connection)
	{
		send_error(s, "too_many_subscriptions",
				   psprintf("a connection may open at most %d subscriptions",
							rtsub_max_subscriptions_per_connection),
				   msg->id);
		return;
	}

	identity(s, &who);
	code = rtsub_subscription_open(s, &who, msg, &sub, &detail);
	if (code != NULL && strcmp(code, RTSUB_OPEN_RESET) == 0)
	{
		audit("resume refused: %s (role %s) subscription \"%s\" id \"%s\": reset",
			  s->remote, s->role, msg->subscription, msg->id);
		return;
	}
	if (code != NULL)
	{
		audit("subscribe denied: %s (role %s) subscription \"%s\" id \"%s\": %s: %s",
			  s->remote, s->role, msg->subscription, msg->id, code,
			  detail ? detail : "");
		send_error(s, code, detail ? detail : code, msg->id);
		return;
	}

	ss = MemoryContextAllocZero(s->cxt, sizeof(SessionSub));
	ss->id = MemoryContextStrdup(s->cxt, msg->id);
	ss->name = MemoryContextStrdup(s->cxt, msg->subscription);
	ss->sub = sub;
	dlist_push_tail(&s->subs, &ss->node);
	s->nsubs++;
	audit("subscribe granted: %s (role %s) subscription \"%s\" id \"%s\"%s%s",
		  s->remote, s->role, msg->subscription, msg->id,
		  msg->snapshot ? " with snapshot" : "",
		  msg->resume_after ? " resumed" : "");
}

/* close one of a session's subscriptions and forget it */
static void
close_sub(RtsubSession *s, SessionSub *ss)
{
	dlist_delete(&ss->node);
	s->nsubs--;
	if (ss->sub)
		rtsub_subscription_close(ss->sub);
	pfree(ss->id);
	pfree(ss->name);
	pfree(ss);
}

/* see session.h: the engine ended a subscription (it sent `reset`) */
void
rtsub_session_subscription_ended(RtsubSession *s, RtsubSubscription *sub)
{
	dlist_iter	it;

	dlist_foreach(it, &s->subs)
	{
		SessionSub *ss = dlist_container(SessionSub, node, it.cur);

		if (ss->sub == sub)
		{
			close_sub(s, ss);
			break;
		}
	}
	/* an SSE stream is its one subscription: it ends after the reset */
	if (s->kind == SESSION_SSE && s->nsubs == 0 && !s->closing)
	{
		s->end_when_drained = true;
		if (s->wsi)
			lws_callback_on_writable(s->wsi);
	}
}

static void
handle_unsubscribe(RtsubSession *s, RtsubClientMsg *msg)
{
	SessionSub *ss = find_sub(s, msg->id);
	StringInfoData buf;

	if (ss == NULL)
	{
		send_error(s, RTSUB_ERR_BAD_FIELD,
				   psprintf("no subscription with id \"%s\" on this connection", msg->id),
				   msg->id);
		return;
	}
	close_sub(s, ss);
	initStringInfo(&buf);
	rtsub_msg_unsubscribed(&buf, s->format, msg->id);
	send_buf(s, &buf);
}

static void
handle_refresh(RtsubSession *s, RtsubClientMsg *msg)
{
	RtsubToken tok;
	const char *message;
	const char *code;
	StringInfoData buf;

	auth_keys_current();
	{
		RtsubAuthError err;
		const char *detail = NULL;

		err = rtsub_verify_jwt(msg->token, now_unix_ms() / 1000, &tok, &detail);
		code = (err == RTSUB_AUTH_OK) ? NULL : rtsub_auth_error_code(err);
		message = detail ? detail : rtsub_auth_error_message(err);
	}
	if (code != NULL)
	{
		count(&rtsub_shared->ws_auth_failures, 1);
		audit("refresh refused: %s (role %s): %s", s->remote, s->role, code);
		send_error(s, code, message, NULL);
		return;
	}
	if (strcmp(tok.role, s->role) != 0)
	{
		audit("refresh refused: %s (role %s): the new token is for role \"%s\"",
			  s->remote, s->role, tok.role);
		send_error(s, "forbidden",
				   "the new token is for another role; reconnect to change roles",
				   NULL);
		return;
	}
	session_set_identity(s, &tok);
	initStringInfo(&buf);
	rtsub_msg_refreshed(&buf, s->format, tok.exp == PG_INT64_MIN ? 0 : tok.exp);
	send_buf(s, &buf);
}

/* the first message of a session without a token: must be `auth` */
static void
handle_auth_message(RtsubSession *s, const char *data, size_t len)
{
	RtsubClientMsg msg;
	char	   *detail;
	const char *code;
	RtsubToken tok;
	const char *message;

	code = rtsub_parse_client_message(data, len, s->format, &msg, &detail);
	if (code != NULL || msg.type != RTSUB_MSG_AUTH)
	{
		audit("connection refused from %s: the first message is not auth", s->remote);
		count(&rtsub_shared->ws_auth_failures, 1);
		start_close(s, CLOSE_AUTH, "auth_required");
		return;
	}
	code = authenticate(msg.token, &tok, &message);
	if (code != NULL)
	{
		audit("connection refused from %s: auth message: %s: %s", s->remote, code, message);
		count(&rtsub_shared->ws_auth_failures, 1);
		start_close(s, CLOSE_AUTH, code);
		return;
	}
	session_set_identity(s, &tok);
	audit("connection authenticated: %s role \"%s\" (auth message, %s)",
		  s->remote, s->role,
		  s->format == RTSUB_FORMAT_MSGPACK ? "rtsub.v1.msgpack" : "rtsub.v1.json");
	send_welcome(s);
}

/* one complete client message of an established session */
static void
dispatch(RtsubSession *s, const char *data, size_t len)
{
	RtsubClientMsg msg;
	char	   *detail;
	const char *code;

	if (!s->authenticated)
	{
		handle_auth_message(s, data, len);
		return;
	}

	code = rtsub_parse_client_message(data, len, s->format, &msg, &detail);
	if (code != NULL)
	{
		send_error(s, code, detail, msg.id);
		return;
	}
	switch (msg.type)
	{
		case RTSUB_MSG_SUBSCRIBE:
			handle_subscribe(s, &msg);
			break;
		case RTSUB_MSG_UNSUBSCRIBE:
			handle_unsubscribe(s, &msg);
			break;
		case RTSUB_MSG_PING:
			{
				StringInfoData buf;

				initStringInfo(&buf);
				rtsub_msg_pong(&buf, s->format, msg.nonce);
				send_buf(s, &buf);
				break;
			}
		case RTSUB_MSG_REFRESH:
			handle_refresh(s, &msg);
			break;
		case RTSUB_MSG_AUTH:
			start_close(s, CLOSE_PROTOCOL, "auth after welcome");
			break;
	}
}

/*
 * The rate limit: false when the message is to be dropped.  The first
 * message over the limit in a second answers `rate_limited`; the third
 * second in a row over the limit closes the connection.
 */
static bool
rate_allows(RtsubSession *s)
{
	int			max = rtsub_max_messages_per_second;
	int64		second;

	if (max <= 0)
		return true;
	second = now_unix_ms() / 1000;
	if (second != s->rate_second)
	{
		if (!(s->rate_over && second == s->rate_second + 1))
			s->rate_streak = 0;
		s->rate_second = second;
		s->rate_count = 0;
		s->rate_over = false;
	}
	if (++s->rate_count <= max)
		return true;
	if (!s->rate_over)
	{
		s->rate_over = true;
		if (++s->rate_streak >= RATE_STREAK_CLOSE)
		{
			audit("connection closed: %s (role %s): rate limit exceeded %d seconds in a row",
				  s->remote, s->role ? s->role : "-", RATE_STREAK_CLOSE);
			start_close(s, CLOSE_RATE, "rate_limited");
		}
		else
			send_error(s, "rate_limited",
					   psprintf("more than %d messages in a second: the rest of this second's messages are dropped",
								max),
					   NULL);
	}
	return false;
}

/* handle one complete message; an ERROR answers `internal` */
static void
handle_message(RtsubSession *s, const char *data, size_t len)
{
	MemoryContext cxt = scratch();
	MemoryContext old = MemoryContextSwitchTo(cxt);

	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->messages_received, 1);
	PG_TRY();
	{
		if (rate_allows(s))
			dispatch(s, data, len);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(cxt);
		if (!s->authenticated)
			start_close(s, CLOSE_INTERNAL, "internal");
		else
			send_error(s, "internal", "the server failed handling this message", NULL);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(cxt);
}

/* LWS_CALLBACK_RECEIVE: accumulate fragments, handle complete messages */
static void
on_receive(struct lws *wsi, RtsubSession *s, const char *in, size_t len)
{
	bool		final = lws_is_final_fragment(wsi);

	if (s->closing)
		return;
	if (!s->in_message)
	{
		bool		binary = lws_frame_is_binary(wsi) != 0;

		if (binary != (s->format == RTSUB_FORMAT_MSGPACK))
		{
			start_close(s, CLOSE_PROTOCOL,
						binary ? "binary frame on rtsub.v1.json" :
						"text frame on rtsub.v1.msgpack");
			return;
		}
		s->in_message = true;
		s->rx_len = 0;
		/* the common case: a whole message in one piece, no copy */
		if (final)
		{
			s->in_message = false;
			if (len > (size_t) rtsub_max_message_size)
				start_close(s, CLOSE_TOO_BIG, "message too big");
			else
				handle_message(s, in, len);
			return;
		}
	}

	if (s->rx_len + len + lws_remaining_packet_payload(wsi) > (size_t) rtsub_max_message_size)
	{
		start_close(s, CLOSE_TOO_BIG, "message too big");
		return;
	}
	if (s->rx_len + len > s->rx_cap)
	{
		size_t		cap = Max(s->rx_cap * 2, 4096);
		char	   *rx;

		while (cap < s->rx_len + len)
			cap *= 2;
		rx = realloc(s->rx, cap);
		if (rx == NULL)
		{
			start_close(s, CLOSE_INTERNAL, "out of memory");
			return;
		}
		s->rx = rx;
		s->rx_cap = cap;
	}
	memcpy(s->rx + s->rx_len, in, len);
	s->rx_len += len;
	if (!final)
		return;

	s->in_message = false;
	handle_message(s, s->rx, s->rx_len);
	if (s->rx_cap > 65536)
	{
		free(s->rx);
		s->rx = NULL;
		s->rx_cap = 0;
	}
	s->rx_len = 0;
}

/* ----------------------------------------------------------------------
 * lifecycle
 * ----------------------------------------------------------------------
 */

/* LWS_CALLBACK_ESTABLISHED */
static void
on_established(struct lws *wsi, RtsubSession *s)
{
	const char *protocol = s->format == RTSUB_FORMAT_MSGPACK ?
		"rtsub.v1.msgpack" : "rtsub.v1.json";

	s->established = true;
	/* no extension was offered, so none is active: frames are plain */
	s->frames_raw = lws_hdr_total_length(wsi, WSI_TOKEN_EXTENSIONS) <= 0;

	/*
	 * permessage-deflate's compressor is set up at the first message:
	 * with zlib's defaults (a 32 kB window, memLevel 8) it holds ~260 kB
	 * per connection, which thousands of mostly idle clients cannot
	 * afford.  A smaller window and memLevel compress small JSON messages
	 * nearly as well for a tenth of the memory (a compressor may always
	 * use a smaller window than the negotiated maximum).  Without the
	 * extension these calls do nothing.
	 */
	if (!s->frames_raw)
	{
		(void) lws_set_extension_option(wsi, "permessage-deflate", "server_max_window_bits", "10");
		(void) lws_set_extension_option(wsi, "permessage-deflate", "mem_level", "2");
	}
	dlist_push_tail(&sessions, &s->node);
	nsessions++;
	count(&rtsub_shared->ws_sessions_open, 1);
	count(&rtsub_shared->ws_sessions_accepted, 1);
	s->last_sent_ms = now_unix_ms();
	if (s->authenticated)
	{
		audit("connection accepted: %s role \"%s\" (%s)", s->remote, s->role, protocol);
		send_welcome(s);
	}
	else
	{
		audit("connection accepted: %s awaiting the auth message (%s)", s->remote, protocol);
		s->auth_deadline_ms = now_unix_ms() + AUTH_TIMEOUT_MS;
	}
	schedule_tick(lws_get_context(wsi));
}

/* the session is over: close its subscriptions, free everything */
static void
session_destroy(RtsubSession *s)
{
	dlist_mutable_iter it;

	if (s->established)
	{
		dlist_delete(&s->node);
		nsessions--;
		count(s->kind == SESSION_SSE ? &rtsub_shared->sse_sessions_open :
			  &rtsub_shared->ws_sessions_open, -1);
		audit("%s closed: %s (role %s)%s%s",
			  s->kind == SESSION_SSE ? "SSE stream" : "connection", s->remote,
			  s->role ? s->role : "-",
			  s->closing ? ": " : "", s->closing ? s->close_reason : "");
	}
	dlist_foreach_modify(it, &s->subs)
	{
		SessionSub *ss = dlist_container(SessionSub, node, it.cur);

		close_sub(s, ss);
	}
	drop_queue(s);
	free(s->rx);
	s->rx = NULL;
	s->wsi = NULL;
	MemoryContextDelete(s->cxt);
}

/* ----------------------------------------------------------------------
 * timers
 * ----------------------------------------------------------------------
 */

/*
 * Whether the client of an SSE stream has closed its connection.  lws does
 * not read from an HTTP connection while its response is being written, so
 * it would notice only when a write fails: look at the socket instead (end
 * of stream or an error; data the client sent is left alone).
 */
static bool
sse_client_gone(RtsubSession *s)
{
	lws_sockfd_type fd;
	char		c;
	ssize_t		n;

	if (s->wsi == NULL)
		return false;
	fd = lws_get_socket_fd(s->wsi);
	if (fd < 0)
		return false;
	n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0)
		return true;
	return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* every TICK_US while sessions exist: deadlines, expiry, heartbeats */
static void
tick(lws_sorted_usec_list_t *sul)
{
	MemoryContext old = MemoryContextSwitchTo(scratch());

	tick_scheduled = false;
	tick_count++;
	PG_TRY();
	{
		int64		now = now_unix_ms();
		StringInfoData hb[3];	/* JSON, MessagePack, SSE comment */
		bool		hb_built = false;
		dlist_iter	it;

		dlist_foreach(it, &sessions)
		{
			RtsubSession *s = dlist_container(RtsubSession, node, it.cur);

			if (s->closing)
				continue;
			if (s->kind == SESSION_SSE && tick_count % SSE_PEEK_TICKS == 0 &&
				sse_client_gone(s))
			{
				start_close(s, CLOSE_CLIENT_GONE, "client closed the connection");
				continue;
			}
			if (!s->authenticated)
			{
				if (now >= s->auth_deadline_ms)
				{
					audit("connection refused from %s: no auth message within %d ms",
						  s->remote, AUTH_TIMEOUT_MS);
					count(&rtsub_shared->ws_auth_failures, 1);
					start_close(s, CLOSE_AUTH, "auth_timeout");
				}
				continue;
			}
			if (s->exp != PG_INT64_MIN &&
				now >= (s->exp + rtsub_jwt_leeway) * 1000)
			{
				audit("%s closed: %s (role %s): token expired",
					  s->kind == SESSION_SSE ? "SSE stream" : "connection",
					  s->remote, s->role);
				start_close(s, CLOSE_AUTH, "token_expired");
				continue;
			}
			if (rtsub_heartbeat_interval > 0 &&
				now - s->last_sent_ms >= rtsub_heartbeat_interval)
			{
				if (!hb_built)
				{
					char		at[RTSUB_POS_TEXT_LEN];

					rtsub_pos_format(rtsub_window_head(), at);

					initStringInfo(&hb[0]);
					rtsub_msg_heartbeat(&hb[0], RTSUB_FORMAT_JSON, at);
					initStringInfo(&hb[1]);
					rtsub_msg_heartbeat(&hb[1], RTSUB_FORMAT_MSGPACK, at);
					initStringInfo(&hb[2]);
					appendStringInfo(&hb[2], ": hb %s\n\n", at);
					hb_built = true;
				}
				if (s->kind == SESSION_SSE)
					(void) enqueue(s, hb[2].data, hb[2].len, RTSUB_PRIORITIES - 1);
				else
					send_buf(s, &hb[s->format == RTSUB_FORMAT_MSGPACK ? 1 : 0]);
			}
		}
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	if (nsessions > 0 && tick_context != NULL)
		schedule_tick(tick_context);
}

/* make sure the tick runs (only while there are sessions) */
static void
schedule_tick(struct lws_context *context)
{
	if (tick_scheduled)
		return;
	tick_context = context;
	tick_scheduled = true;
	lws_sul_schedule(context, 0, &tick_sul, tick, TICK_US);
}

/* ----------------------------------------------------------------------
 * the callback
 * ----------------------------------------------------------------------
 */

/* the body of rtsub_session_callback */
static int
session_callback(struct lws *wsi, enum lws_callback_reasons reason,
				 WsPss *pss, void *in, size_t len, RtsubFormat format)
{
	RtsubSession *s = pss ? pss->session : NULL;

	switch (reason)
	{
		case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
			if (pss == NULL)
				return -1;
			return filter_connection(wsi, pss, format);

		case LWS_CALLBACK_ESTABLISHED:
			if (s == NULL)
				return -1;
			on_established(wsi, s);
			return 0;

		case LWS_CALLBACK_RECEIVE:
			if (s == NULL)
				return -1;
			on_receive(wsi, s, (const char *) in, len);
			return 0;

		case LWS_CALLBACK_SERVER_WRITEABLE:
			if (s == NULL)
				return -1;
			return on_writeable(wsi, s);

		case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
			/* the answer to our close ends the connection; else lws echoes */
			return (s != NULL && s->close_sent) ? -1 : 0;

		case LWS_CALLBACK_CLOSED:
			if (s != NULL)
			{
				pss->session = NULL;
				session_destroy(s);
			}
			return 0;

		default:
			return 0;
	}
}

/*
 * The callback of the protocols rtsub.v1.json and rtsub.v1.msgpack (see
 * ws_server.c's protocol list): catches every error.
 */
int
rtsub_session_callback(struct lws *wsi, enum lws_callback_reasons reason,
					   void *user, void *in, size_t len)
{
	const struct lws_protocols *p = lws_get_protocol(wsi);
	RtsubFormat format = (p && p->id == RTSUB_FORMAT_MSGPACK) ?
		RTSUB_FORMAT_MSGPACK : RTSUB_FORMAT_JSON;
	MemoryContext old = MemoryContextSwitchTo(scratch());
	volatile int rc = 0;

	PG_TRY();
	{
		rc = session_callback(wsi, reason, (WsPss *) user, in, len, format);
	}
	PG_CATCH();
	{
		WsPss	   *pss = (WsPss *) user;

		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		if (reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION)
		{
			refuse(wsi, 500, "Internal Server Error", "internal_error",
				   "internal server error");
			rc = -1;
		}
		else if (pss && pss->session)
		{
			start_close(pss->session, CLOSE_INTERNAL, "internal");
			rc = (reason == LWS_CALLBACK_CLOSED) ? 0 : -1;
		}
		else
			rc = (reason == LWS_CALLBACK_CLOSED) ? 0 : -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	return rc;
}

/*
 * LWS_CALLBACK_WSI_DESTROY (lws delivers it to the HTTP protocol, with the
 * WebSocket protocol's user data): free a session that never got to
 * LWS_CALLBACK_CLOSED (its handshake failed after the filter).
 */
void
rtsub_session_wsi_destroy(void *user)
{
	WsPss	   *pss = (WsPss *) user;
	RtsubSession *s = pss ? pss->session : NULL;
	MemoryContext old;

	if (s == NULL)
		return;
	pss->session = NULL;
	old = MemoryContextSwitchTo(scratch());
	PG_TRY();
	{
		session_destroy(s);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
}

/* ----------------------------------------------------------------------
 * Server-Sent Events: GET /v1/sse
 * ----------------------------------------------------------------------
 */

/* the session of an SSE request being opened: freed if an ERROR interrupts */
static RtsubSession *sse_opening = NULL;

/* a query parameter, URL-decoded by lws (palloc'd), or NULL when absent */
static char *
query_arg(struct lws *wsi, const char *name_eq)
{
	char		buf[4096];		/* the whole request head is at most 4 kB */
	const char *v = lws_get_urlarg_by_name(wsi, name_eq, buf, sizeof(buf));

	return v ? pstrdup(v) : NULL;
}

/* whether text is one valid JSON object */
static bool
json_object_text(char *text)
{
	const char *p = text;
	JsonLexContext *lex;

	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	if (*p != '{')
		return false;
	lex = makeJsonLexContextCstringLen(text, strlen(text), GetDatabaseEncoding(), false);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/* refuse an SSE request with an HTTP error (JSON body); see ws_server.c */
static int
sse_refuse(struct lws *wsi, int status, const char *code, const char *message)
{
	char		peer[64];

	count(&rtsub_shared->sse_sessions_refused, 1);
	lws_get_peer_simple(wsi, peer, sizeof(peer));
	audit("SSE stream refused from %s: %d %s: %s", peer, status, code, message);
	return rtsub_http_error(wsi, status, code, message);
}

/*
 * CORS for a browser on an allowed origin (checked before): the origin
 * echoed with Vary: Origin, no credentials (tokens are not cookies).
 * Nothing for requests without Origin.  Nonzero if the headers do not fit.
 */
static int
sse_cors_headers(struct lws *wsi, const char *origin, unsigned char **p,
				 unsigned char *end)
{
	if (origin == NULL || strlen(origin) > 512)
		return 0;
	return lws_add_http_header_by_name(wsi, (const unsigned char *) "access-control-allow-origin:",
									   (const unsigned char *) origin, (int) strlen(origin), p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "vary:",
									(const unsigned char *) "Origin", 6, p, end);
}

/*
 * OPTIONS /v1/sse, a browser's CORS preflight (for Authorization or
 * Last-Event-ID): 204 with what may be sent, for an allowed origin; 403
 * origin_not_allowed otherwise.  Returns what the callback returns.
 */
int
rtsub_sse_preflight(struct lws *wsi)
{
	MemoryContext old = MemoryContextSwitchTo(scratch());
	unsigned char headers[LWS_PRE + 1024];
	unsigned char *start = headers + LWS_PRE;
	unsigned char *p = start;
	unsigned char *end = headers + sizeof(headers) - 1;
	char	   *origin;
	int			rc = -1;

	if (!origin_allowed(wsi, &origin) || origin == NULL)
	{
		rc = sse_refuse(wsi, 403, "origin_not_allowed",
						origin ? psprintf("origin \"%s\" is not allowed", origin) :
						"a preflight needs an Origin");
		MemoryContextSwitchTo(old);
		MemoryContextReset(scratch());
		return rc;
	}
	if (lws_add_http_common_headers(wsi, HTTP_STATUS_NO_CONTENT, NULL, 0, &p, end) == 0 &&
		sse_cors_headers(wsi, origin, &p, end) == 0 &&
		lws_add_http_header_by_name(wsi, (const unsigned char *) "access-control-allow-methods:",
									(const unsigned char *) "GET", 3, &p, end) == 0 &&
		lws_add_http_header_by_name(wsi, (const unsigned char *) "access-control-allow-headers:",
									(const unsigned char *) "Authorization, Last-Event-ID", 28, &p, end) == 0 &&
		lws_add_http_header_by_name(wsi, (const unsigned char *) "access-control-max-age:",
									(const unsigned char *) "600", 3, &p, end) == 0 &&
		lws_finalize_write_http_header(wsi, start, &p, end) == 0)
	{
		if (rtsub_shared)
			pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, p - start);
		rc = lws_http_transaction_completed(wsi) ? -1 : 0;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	return rc;
}

/* write the 200 response head of an SSE stream (no length: until close) */
static int
sse_write_headers(struct lws *wsi, const char *origin)
{
	unsigned char headers[LWS_PRE + 1024];
	unsigned char *start = headers + LWS_PRE;
	unsigned char *p = start;
	unsigned char *end = headers + sizeof(headers) - 1;

	if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/event-stream",
									LWS_ILLEGAL_HTTP_CONTENT_LEN, &p, end) ||
		sse_cors_headers(wsi, origin, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "cache-control:",
									(const unsigned char *) "no-store", 8, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "x-accel-buffering:",
									(const unsigned char *) "no", 2, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "x-content-type-options:",
									(const unsigned char *) "nosniff", 7, &p, end) ||
		lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, p - start);
	return 0;
}

/*
 * The subscribe message an SSE request stands for, from its query
 * (subscription, params, batchSize, includeMetadata), checked by the
 * protocol parser.  NULL on success, else an error code with *detail.
 */
static const char *
sse_subscribe_msg(struct lws *wsi, RtsubClientMsg *msg, char **detail)
{
	char	   *name = query_arg(wsi, "subscription=");
	char	   *params = query_arg(wsi, "params=");
	char	   *batch = query_arg(wsi, "batchSize=");
	char	   *meta = query_arg(wsi, "includeMetadata=");
	char	   *snapshot = query_arg(wsi, "snapshot=");
	char	   *chunk_rows = query_arg(wsi, "chunkRows=");
	char	   *chunk_bytes = query_arg(wsi, "chunkBytes=");
	char	   *last_id = NULL;
	StringInfoData req;
	int			n;

	if ((n = lws_hdr_custom_length(wsi, "last-event-id:", 14)) > 0)
	{
		last_id = palloc(n + 1);
		if (lws_hdr_custom_copy(wsi, last_id, n + 1, "last-event-id:", 14) < 0)
			last_id = NULL;
	}
	/* a page resuming from a stored id cannot set headers on EventSource */
	if (last_id == NULL)
		last_id = query_arg(wsi, "lastEventId=");

	if (name == NULL || name[0] == '\0')
	{
		*detail = "the query parameter subscription is required";
		return RTSUB_ERR_BAD_FIELD;
	}
	initStringInfo(&req);
	appendStringInfoString(&req, "{\"type\":\"subscribe\",\"id\":\"" SSE_SUB_ID "\",\"subscription\":");
	escape_json(&req, name);
	if (params != NULL)
	{
		if (!json_object_text(params))
		{
			*detail = "the query parameter params must be a JSON object";
			return "bad_params";
		}
		appendStringInfo(&req, ",\"params\":%s", params);
	}
	if (batch != NULL)
	{
		if (batch[0] == '\0' || strlen(batch) > 9 || strspn(batch, "0123456789") != strlen(batch))
		{
			*detail = "the query parameter batchSize must be an integer from 1 to 1000";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfo(&req, ",\"batchSize\":%s", batch);
	}
	if (meta != NULL)
	{
		bool		on;

		if (!parse_bool(meta, &on))
		{
			*detail = "the query parameter includeMetadata must be true or false";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfo(&req, ",\"includeMetadata\":%s", on ? "true" : "false");
	}
	if (snapshot != NULL)
	{
		bool		on;

		if (!parse_bool(snapshot, &on))
		{
			*detail = "the query parameter snapshot must be true or false";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfo(&req, ",\"snapshot\":%s", on ? "true" : "false");
	}
	if (chunk_rows != NULL)
	{
		if (chunk_rows[0] == '\0' || strlen(chunk_rows) > 9 ||
			strspn(chunk_rows, "0123456789") != strlen(chunk_rows))
		{
			*detail = "the query parameter chunkRows must be an integer from 1 to 100000";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfo(&req, ",\"chunkRows\":%s", chunk_rows);
	}
	if (chunk_bytes != NULL)
	{
		if (chunk_bytes[0] == '\0' || strlen(chunk_bytes) > 9 ||
			strspn(chunk_bytes, "0123456789") != strlen(chunk_bytes))
		{
			*detail = "the query parameter chunkBytes must be an integer from 1024 to 16777216";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfo(&req, ",\"chunkBytes\":%s", chunk_bytes);
	}
	if (last_id != NULL && last_id[0] != '\0')
	{
		/* "<event id>@<epoch>", as the stream's id: fields carry it */
		char	   *at = strrchr(last_id, '@');
		RtsubPos	pos;

		if (at == NULL || at == last_id || strlen(at + 1) != RTSUB_EPOCH_LEN)
		{
			*detail = "the Last-Event-ID header must be an event id and an epoch, \"<event id>@<epoch>\"";
			return RTSUB_ERR_BAD_FIELD;
		}
		*at = '\0';
		if (!rtsub_pos_parse(last_id, &pos) ||
			strspn(at + 1, "0123456789abcdef") != RTSUB_EPOCH_LEN)
		{
			*detail = "the Last-Event-ID header must be an event id and an epoch, \"<event id>@<epoch>\"";
			return RTSUB_ERR_BAD_FIELD;
		}
		appendStringInfoString(&req, ",\"resume\":{\"epoch\":");
		escape_json(&req, at + 1);
		appendStringInfoString(&req, ",\"after\":");
		escape_json(&req, last_id);
		appendStringInfoChar(&req, '}');
	}
	appendStringInfoChar(&req, '}');
	return rtsub_parse_client_message(req.data, req.len, RTSUB_FORMAT_JSON, msg, detail);
}

/* the HTTP status of a subscribe error */
static int
sse_error_status(const char *code)
{
	if (strcmp(code, "unknown_subscription") == 0)
		return 404;
	if (strcmp(code, "forbidden") == 0)
		return 403;
	if (strcmp(code, "internal") == 0)
		return 500;
	return 400;
}

/*
 * GET /v1/sse: Origin, token, role, the subscription; every refusal is an
 * HTTP error before anything else is written.  On success the stream's
 * head goes out, then welcome and subscribed; *handle is the session.
 */
static int
sse_request(struct lws *wsi, void **handle)
{
	char	   *origin;
	char	   *token;
	bool		not_bearer;
	RtsubToken	tok;
	const char *code;
	const char *message;
	RtsubClientMsg msg;
	char	   *detail = NULL;
	RtsubSession *s;
	RtsubClientIdentity who;
	RtsubSubscription *sub = NULL;
	SessionSub *ss;
	bool		reset_only;

	if (!origin_allowed(wsi, &origin))
		return sse_refuse(wsi, 403, "origin_not_allowed",
						  psprintf("origin \"%s\" is not allowed", origin));
	token = handshake_token(wsi, &not_bearer);
	if (not_bearer)
	{
		count(&rtsub_shared->ws_auth_failures, 1);
		return sse_refuse(wsi, 401, "token_malformed",
						  "the Authorization header is not a Bearer token");
	}
	if (token == NULL)
	{
		count(&rtsub_shared->ws_auth_failures, 1);
		return sse_refuse(wsi, 401, "auth_required",
						  "a token is required: Authorization: Bearer or the query parameter access_token");
	}
	code = authenticate(token, &tok, &message);
	if (code != NULL)
	{
		count(&rtsub_shared->ws_auth_failures, 1);
		return sse_refuse(wsi, 401, code, message);
	}
	code = sse_subscribe_msg(wsi, &msg, &detail);
	if (code != NULL)
		return sse_refuse(wsi, 400, code, detail ? detail : code);

	s = session_create(wsi, RTSUB_FORMAT_JSON);
	s->kind = SESSION_SSE;
	sse_opening = s;
	session_set_identity(s, &tok);
	identity(s, &who);
	/* queued in order: the welcome, then what opening the subscription sends */
	s->last_sent_ms = now_unix_ms();
	send_welcome(s);
	code = rtsub_subscription_open(s, &who, &msg, &sub, &detail);
	reset_only = (code != NULL && strcmp(code, RTSUB_OPEN_RESET) == 0);
	if (code != NULL && !reset_only)
	{
		sse_opening = NULL;
		drop_queue(s);
		MemoryContextDelete(s->cxt);
		audit("subscribe denied: %s (role %s, SSE) subscription \"%s\": %s: %s",
			  s->remote, tok.role, msg.subscription, code, detail ? detail : "");
		return sse_refuse(wsi, sse_error_status(code), code, detail ? detail : code);
	}
	if (reset_only)
		s->end_when_drained = true; /* the reset is the stream */
	else
	{
		ss = MemoryContextAllocZero(s->cxt, sizeof(SessionSub));
		ss->id = MemoryContextStrdup(s->cxt, msg.id);
		ss->name = MemoryContextStrdup(s->cxt, msg.subscription);
		ss->sub = sub;
		dlist_push_tail(&s->subs, &ss->node);
		s->nsubs++;
	}

	/* established: from here on lws's close callbacks destroy the session */
	s->established = true;
	dlist_push_tail(&sessions, &s->node);
	nsessions++;
	*handle = s;
	sse_opening = NULL;
	count(&rtsub_shared->sse_sessions_open, 1);
	count(&rtsub_shared->sse_sessions_accepted, 1);
	audit("SSE stream accepted: %s role \"%s\" subscription \"%s\"",
		  s->remote, s->role, msg.subscription);

	if (sse_write_headers(wsi, origin) != 0)
		return -1;
	/* an endless response: no timeout, and the request head is not needed */
	lws_http_mark_sse(wsi);
	lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);

	lws_callback_on_writable(wsi);
	schedule_tick(lws_get_context(wsi));
	return 0;
}

/*
 * LWS_CALLBACK_HTTP for GET /v1/sse (ws_server.c); *handle receives the
 * session, to be passed to rtsub_sse_writeable() and rtsub_sse_closed().
 * Returns what the callback returns.
 */
int
rtsub_sse_request(struct lws *wsi, void **handle)
{
	MemoryContext old = MemoryContextSwitchTo(scratch());
	volatile int rc = -1;

	*handle = NULL;
	PG_TRY();
	{
		rc = sse_request(wsi, handle);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(scratch());
		if (sse_opening != NULL)
		{
			RtsubSession *s = sse_opening;

			sse_opening = NULL;
			session_destroy(s);
		}
		if (*handle == NULL)
			rc = rtsub_http_error(wsi, 500, "internal", "internal server error");
		else
			rc = -1;			/* the stream had begun: close it */
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	return rc;
}

/* LWS_CALLBACK_HTTP_WRITEABLE of an SSE stream */
int
rtsub_sse_writeable(struct lws *wsi, void *handle)
{
	RtsubSession *s = (RtsubSession *) handle;
	MemoryContext old = MemoryContextSwitchTo(scratch());
	volatile int rc = -1;

	PG_TRY();
	{
		rc = sse_on_writeable(wsi, s);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
		rc = -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
	return rc;
}

/* the SSE stream's connection is gone: close its subscription */
void
rtsub_sse_closed(void *handle)
{
	RtsubSession *s = (RtsubSession *) handle;
	MemoryContext old = MemoryContextSwitchTo(scratch());

	PG_TRY();
	{
		session_destroy(s);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(scratch());
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch());
}

/* ----------------------------------------------------------------------
 * server shutdown
 * ----------------------------------------------------------------------
 */

/* start closing every session with 1001; returns how many there are */
int
rtsub_sessions_close_all(void)
{
	dlist_iter	it;

	if (tick_scheduled)
	{
		lws_sul_cancel(&tick_sul);
		tick_scheduled = false;
	}
	tick_context = NULL;
	dlist_foreach(it, &sessions)
	{
		RtsubSession *s = dlist_container(RtsubSession, node, it.cur);

		start_close(s, CLOSE_GOING_AWAY, "server shutting down");
	}
	return nsessions;
}

/* the number of established sessions */
int
rtsub_sessions_count(void)
{
	return nsessions;
}

/* append a JSON string, or null */
static void
json_str_or_null(StringInfo out, const char *v)
{
	if (v == NULL)
		appendStringInfoString(out, "null");
	else
		escape_json(out, v);
}

/*
 * Describe every established session and its subscriptions as a JSON
 * array, for rtsub.connections and rtsub.active_subscriptions (monitor.c)
 */
void
rtsub_sessions_describe(StringInfo out)
{
	dlist_iter	it;
	bool		first = true;

	appendStringInfoChar(out, '[');
	dlist_foreach(it, &sessions)
	{
		RtsubSession *s = dlist_container(RtsubSession, node, it.cur);
		dlist_iter	si;
		bool		first_sub = true;

		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		appendStringInfo(out, "{\"id\":" UINT64_FORMAT ",\"transport\":\"%s\",\"format\":\"%s\",\"remote_addr\":",
						 s->serial, s->kind == SESSION_SSE ? "sse" : "websocket",
						 s->format == RTSUB_FORMAT_MSGPACK ? "msgpack" : "json");
		escape_json(out, s->remote);
		appendStringInfoString(out, ",\"user\":");
		json_str_or_null(out, s->user);
		appendStringInfoString(out, ",\"role\":");
		json_str_or_null(out, s->role);
		appendStringInfoString(out, ",\"connected_at\":");
		escape_json(out, timestamptz_to_str(s->connected_at));
		appendStringInfoString(out, ",\"token_expires_at\":");
		if (s->exp == PG_INT64_MIN)
			appendStringInfoString(out, "null");
		else
			appendStringInfo(out, INT64_FORMAT, s->exp);
		appendStringInfo(out, ",\"state\":\"%s\",\"subscriptions\":%d,\"messages_sent\":" UINT64_FORMAT
						 ",\"bytes_sent\":" UINT64_FORMAT ",\"queue_bytes\":%zu,\"queue_messages\":%d,\"subs\":[",
						 s->closing ? "closing" : (s->authenticated ? "open" : "authenticating"),
						 s->nsubs, s->messages_sent, s->bytes_sent, s->queued_bytes,
						 s->queued_messages);
		dlist_foreach(si, &s->subs)
		{
			SessionSub *ss = dlist_container(SessionSub, node, si.cur);

			if (!first_sub)
				appendStringInfoChar(out, ',');
			first_sub = false;
			appendStringInfoString(out, "{\"id\":");
			escape_json(out, ss->id);
			appendStringInfoString(out, ",\"subscription\":");
			escape_json(out, ss->name);
			if (ss->sub)
				rtsub_subscription_describe(ss->sub, out);
			appendStringInfoChar(out, '}');
		}
		appendStringInfoString(out, "]}");
	}
	appendStringInfoChar(out, ']');
}

/*
 * The commit time of the change the next messages carry (0: none), for the
 * commit-to-send latency histogram; set by the engine around sending a
 * change
 */
void
rtsub_session_event_time(TimestampTz commit_time)
{
	event_commit_time = commit_time;
}
