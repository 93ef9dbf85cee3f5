/*-------------------------------------------------------------------------
 *
 * ws_server.c
 *	  Owns the rtsub server's network side: the libwebsockets context and
 *	  its event loop, the HTTP routes (/healthz, /metrics, and /v1/sse, whose
 *	  streams are session.c's) and the protocol list: HTTP plus the
 *	  WebSocket subprotocols rtsub.v1.json and rtsub.v1.msgpack, whose
 *	  sessions are session.c's, with permessage-deflate.  Runs only in the rtsub server worker (worker.c),
 *	  which drives it from its single wait point.
 *
 *	  Event loop: Debian's libwebsockets 4.1.6 is built without
 *	  LWS_WITH_EXTERNAL_POLL, so lws never reports its fds through the
 *	  LWS_CALLBACK_*_POLL_FD callbacks.  Instead lws runs on a *foreign*
 *	  libuv loop owned by this file: libuv keeps every lws fd (listen
 *	  socket, connections, lws's event pipe) and lws's timers in one epoll
 *	  fd, uv_backend_fd().  The worker waits on that fd in its WaitEventSet
 *	  together with its latch and postmaster death, with the timeout from
 *	  uv_backend_timeout() (lws's next timer); when anything is due it calls
 *	  rtsub_ws_service(), one non-blocking uv_run().  libuv is a dependency
 *	  of libwebsockets-dev and lws loads its libuv event-lib plugin itself;
 *	  this file reaches libuv through dlopen() so that only the worker, not
 *	  every backend loading rtsub.so, maps it (and no extra link flag is
 *	  needed).
 *
 *	  Callbacks run inside uv_run(): nothing may longjmp through lws or
 *	  libuv, so every callback catches PostgreSQL errors itself (an ERROR
 *	  while answering a request answers 500 and the worker keeps serving),
 *	  and CHECK_FOR_INTERRUPTS() is called only by the worker between
 *	  services.  palloc'd memory is per service iteration (the worker resets
 *	  the current memory context); lws and libuv own their memory (malloc).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"

#include <dlfcn.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>

#include <uv.h>
#include <libwebsockets.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "config.h"
#include "encode.h"
#include "shmem.h"
#include "ws_server.h"

/* libuv, reached through dlopen() (see the file comment) */
typedef struct UvApi
{
	int			(*loop_init) (uv_loop_t *loop);
	int			(*loop_close) (uv_loop_t *loop);
	int			(*run) (uv_loop_t *loop, uv_run_mode mode);
	int			(*backend_fd) (const uv_loop_t *loop);
	int			(*backend_timeout) (const uv_loop_t *loop);
} UvApi;

/* per-connection state of the HTTP protocol (lws allocates it) */
typedef struct HttpSession
{
	int			deferred_status;	/* answer once the request body is read */
	size_t		body_bytes;		/* request body bytes discarded so far */
	void	   *sse;			/* an SSE stream's session (session.c) */
} HttpSession;

#define MAX_DISCARDED_BODY	(64 * 1024)

/* the WWW-Authenticate header of a 401 */
#define BEARER_CHALLENGE	"Bearer error=\"invalid_token\""

static void *uv_handle = NULL;
static UvApi uv;
static uv_loop_t *loop = NULL;	/* malloc'd: libuv and lws own it */
static struct lws_context *context = NULL;
static int	callback_depth = 0;
static int	open_connections = 0;
static char lws_last_error[256];

/* marks the wsis of accepted client connections (lws opaque user data) */
static char client_connection_marker;

static int	http_callback(struct lws *wsi, enum lws_callback_reasons reason,
						  void *user, void *in, size_t len);

/*
 * Protocol 0 is HTTP (and gets lws's connection lifecycle callbacks); one
 * protocol per WebSocket subprotocol, its id the wire format.  lws binds
 * an upgrade to the first subprotocol the client offers that is listed
 * here; without any it binds protocol 0, which refuses (session.c).
 */
/*
 * WebSocket protocols read into a 1 kB buffer per connection (lws's
 * default is 4 kB): client messages are small, and session.c assembles
 * larger ones across callbacks; with thousands of idle clients it adds up.
 */
#define WS_RX_BUFFER_SIZE 1024

static const struct lws_protocols protocols[] = {
	{"http", http_callback, sizeof(HttpSession), 0, 0, NULL, 0},
	{"rtsub.v1.json", rtsub_session_callback, sizeof(void *), WS_RX_BUFFER_SIZE,
	RTSUB_FORMAT_JSON, NULL, 0},
	{"rtsub.v1.msgpack", rtsub_session_callback, sizeof(void *), WS_RX_BUFFER_SIZE,
	RTSUB_FORMAT_MSGPACK, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

/* RFC 7692 compression, negotiated when the client offers it */
static const struct lws_extension extensions[] = {
	{"permessage-deflate", lws_extension_callback_pm_deflate,
	"permessage-deflate; client_max_window_bits"},
	{NULL, NULL, NULL}
};

/* passes of forced service per rtsub_ws_service() (see there) */
#define MAX_FORCED_SERVICE_PASSES	64

/* how long a stopping server waits for its close frames to go out */
#define SHUTDOWN_CLOSE_WAIT_MS	250

/* load libuv and resolve the few functions used; false with *error set */
static bool
load_libuv(char **error)
{
	if (uv_handle != NULL)
		return true;
	uv_handle = dlopen("libuv.so.1", RTLD_NOW | RTLD_LOCAL);
	if (uv_handle == NULL)
	{
		*error = psprintf("could not load libuv: %s", dlerror());
		return false;
	}
	uv.loop_init = (int (*) (uv_loop_t *)) dlsym(uv_handle, "uv_loop_init");
	uv.loop_close = (int (*) (uv_loop_t *)) dlsym(uv_handle, "uv_loop_close");
	uv.run = (int (*) (uv_loop_t *, uv_run_mode)) dlsym(uv_handle, "uv_run");
	uv.backend_fd = (int (*) (const uv_loop_t *)) dlsym(uv_handle, "uv_backend_fd");
	uv.backend_timeout = (int (*) (const uv_loop_t *)) dlsym(uv_handle, "uv_backend_timeout");
	if (!uv.loop_init || !uv.loop_close || !uv.run || !uv.backend_fd ||
		!uv.backend_timeout)
	{
		*error = pstrdup("could not find the libuv functions in libuv.so.1");
		return false;
	}
	return true;
}

/*
 * lws log lines go to the server log at DEBUG1: lws logs client mistakes
 * (such as oversized headers) as errors, which must not flood the log.
 * The last error is kept: a failed start reports it.
 */
static void
lws_log_emit(int level, const char *line)
{
	char		buf[sizeof(lws_last_error)];
	size_t		n;

	strlcpy(buf, line, sizeof(buf));
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	if (level & LLL_ERR)
		strlcpy(lws_last_error, buf, sizeof(lws_last_error));

	PG_TRY();
	{
		ereport(DEBUG1,
				(errmsg_internal("rtsub server: libwebsockets: %s", buf),
				 errhidestmt(true)));
	}
	PG_CATCH();
	{
		FlushErrorState();
	}
	PG_END_TRY();
}

/*
 * Turn rtsub.listen_address into lws's iface: NULL for every interface
 * ("*" or empty), an IP address, or an interface name; *ipv4 when it is an
 * IPv4 address (then IPv6 is disabled).  "localhost" is 127.0.0.1, other
 * host names are resolved to their first address (IPv4 preferred).  Sets
 * *unknown (and returns NULL) for a name that is neither a host nor an
 * interface.
 */
static const char *
listen_iface(const char *address, bool *ipv4, bool *unknown)
{
	struct in_addr a4;
	struct in6_addr a6;
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	struct addrinfo *ai;
	struct addrinfo *chosen = NULL;
	char		host[NI_MAXHOST];

	*ipv4 = false;
	*unknown = false;
	if (address == NULL || address[0] == '\0' || strcmp(address, "*") == 0)
		return NULL;
	if (pg_strcasecmp(address, "localhost") == 0)
	{
		*ipv4 = true;
		return "127.0.0.1";
	}
	if (inet_pton(AF_INET, address, &a4) == 1)
	{
		*ipv4 = true;
		return address;
	}
	if (inet_pton(AF_INET6, address, &a6) == 1)
		return address;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(address, NULL, &hints, &res) != 0 || res == NULL)
	{
		if (if_nametoindex(address) != 0)
			return address;		/* an interface: lws binds its address */
		*unknown = true;
		return NULL;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next)
	{
		if (ai->ai_family == AF_INET)
		{
			chosen = ai;
			break;
		}
		if (ai->ai_family == AF_INET6 && chosen == NULL)
			chosen = ai;
	}
	if (chosen == NULL ||
		getnameinfo(chosen->ai_addr, chosen->ai_addrlen, host, sizeof(host),
					NULL, 0, NI_NUMERICHOST) != 0)
	{
		freeaddrinfo(res);
		return address;
	}
	*ipv4 = (chosen->ai_family == AF_INET);
	freeaddrinfo(res);
	return pstrdup(host);
}

/*
 * Whether port can be bound on iface (an IP address or NULL for all), so
 * that the common failure, a port in use, is reported without starting
 * lws.  Interface names are left to lws.
 */
static bool
port_available(const char *iface, int port, char **error)
{
	struct sockaddr_storage addr;
	socklen_t	addrlen;
	int			fd;
	int			one = 1;
	bool		ok;

	memset(&addr, 0, sizeof(addr));
	if (iface == NULL)
	{
		struct sockaddr_in6 *a = (struct sockaddr_in6 *) &addr;

		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_any;
		a->sin6_port = htons(port);
		addrlen = sizeof(*a);
	}
	else if (inet_pton(AF_INET, iface, &((struct sockaddr_in *) &addr)->sin_addr) == 1)
	{
		addr.ss_family = AF_INET;
		((struct sockaddr_in *) &addr)->sin_port = htons(port);
		addrlen = sizeof(struct sockaddr_in);
	}
	else if (inet_pton(AF_INET6, iface, &((struct sockaddr_in6 *) &addr)->sin6_addr) == 1)
	{
		addr.ss_family = AF_INET6;
		((struct sockaddr_in6 *) &addr)->sin6_port = htons(port);
		addrlen = sizeof(struct sockaddr_in6);
	}
	else
		return true;

	fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 && iface == NULL)
	{
		/* no IPv6: every IPv4 interface */
		struct sockaddr_in *a = (struct sockaddr_in *) &addr;

		memset(&addr, 0, sizeof(addr));
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_ANY);
		a->sin_port = htons(port);
		addrlen = sizeof(*a);
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	}
	if (fd < 0)
		return true;			/* let lws report it */
	(void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ok = bind(fd, (struct sockaddr *) &addr, addrlen) == 0;
	if (!ok)
		*error = psprintf("could not listen on %s port %d: %m",
						  iface ? iface : "*", port);
	close(fd);
	return ok;
}

/*
 * Start serving on listen_address:port.  Returns false with *error set when
 * that fails (for example when the port is in use).
 */
bool
rtsub_ws_start(const char *listen_address, int port, char **error)
{
	struct lws_context_creation_info info;
	void	   *foreign_loops[1];
	const char *iface;
	bool		ipv4;
	bool		unknown;

	Assert(context == NULL);
	*error = NULL;
	lws_last_error[0] = '\0';
	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_emit);

	if (!load_libuv(error))
		return false;
	if (loop == NULL)
	{
		loop = malloc(sizeof(uv_loop_t));
		if (loop == NULL || uv.loop_init(loop) != 0)
		{
			free(loop);
			loop = NULL;
			*error = pstrdup("could not create the event loop");
			return false;
		}
	}
	foreign_loops[0] = loop;

	iface = listen_iface(listen_address, &ipv4, &unknown);
	if (unknown)
	{
		*error = psprintf("could not resolve rtsub.listen_address \"%s\"",
						  listen_address);
		return false;
	}
	if (!port_available(iface, port, error))
		return false;

	memset(&info, 0, sizeof(info));
	info.port = port;
	info.iface = iface;
	info.protocols = protocols;
	info.extensions = extensions;
	info.vhost_name = "rtsub";
	info.server_string = "rtsub";
	info.options = LWS_SERVER_OPTION_LIBUV;
	if (ipv4)
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	info.foreign_loops = foreign_loops;
	info.gid = -1;
	info.uid = -1;
	/* bounds of a request: header size, parallel header parsing, timeouts */
	info.max_http_header_data = 4096;
	info.max_http_header_pool = 64;
	info.keepalive_timeout = 5;
	info.timeout_secs = 10;

	if (rtsub_shared)
	{
		pg_atomic_write_u64(&rtsub_shared->ws_sessions_open, 0);
		pg_atomic_write_u64(&rtsub_shared->sse_sessions_open, 0);
	}

	callback_depth++;
	context = lws_create_context(&info);
	callback_depth--;

	/*
	 * lws 4.1 may return a context whose default vhost failed (it could not
	 * listen); that context is half torn down and must not be used, not even
	 * destroyed: forget it, the worker exits at once.
	 */
	if (context == NULL || lws_get_vhost_by_name(context, "rtsub") == NULL ||
		lws_get_vhost_listen_port(lws_get_vhost_by_name(context, "rtsub")) <= 0)
	{
		context = NULL;
		*error = lws_last_error[0] ?
			psprintf("could not listen on %s port %d: libwebsockets: %s",
					 iface ? iface : "*", port, lws_last_error) :
			psprintf("could not listen on %s port %d",
					 iface ? iface : "*", port);
		return false;
	}
	return true;
}

/* the TCP port the server listens on */
int
rtsub_ws_port(void)
{
	struct lws_vhost *vhost;

	if (context == NULL)
		return 0;
	vhost = lws_get_vhost_by_name(context, "rtsub");
	return vhost ? lws_get_vhost_listen_port(vhost) : 0;
}

/* the one fd the worker waits on: libuv's epoll fd holding every lws fd */
int
rtsub_ws_wait_fd(void)
{
	Assert(loop != NULL);
	return uv.backend_fd(loop);
}

/* how long the worker may wait (ms) before lws needs service, <= max_ms */
long
rtsub_ws_timeout(long max_ms)
{
	int			t;

	if (loop == NULL || context == NULL)
		return max_ms;
	t = uv.backend_timeout(loop);
	if (t >= 0 && t < max_ms)
		max_ms = t;
	t = lws_service_adjust_timeout(context, (int) max_ms, 0);
	if (t >= 0 && t < max_ms)
		max_ms = t;
	return max_ms;
}

/* service whatever is ready (sockets, timers), without blocking */
void
rtsub_ws_service(void)
{
	if (loop == NULL || context == NULL)
		return;
	callback_depth++;
	uv.run(loop, UV_RUN_NOWAIT);

	/*
	 * lws leaves buffered input (permessage-deflate output not yet handed
	 * over) to a libuv idle handle that stops itself after one pass and is
	 * restarted only by socket activity: while lws says such forced service
	 * is pending, wake it through its event pipe and run the loop again.
	 */
	for (int i = 0; i < MAX_FORCED_SERVICE_PASSES &&
		 lws_service_adjust_timeout(context, 1, 0) == 0; i++)
	{
		lws_cancel_service(context);
		uv.run(loop, UV_RUN_NOWAIT);
	}
	callback_depth--;
}

/* close every connection and the listen socket; release lws and libuv */
void
rtsub_ws_stop(void)
{
	int			i;

	if (callback_depth > 0)
		return;					/* exiting from inside lws: the kernel cleans up */
	if (context != NULL)
	{
		callback_depth++;

		/* WebSocket clients get 1001 (going away), briefly waited for */
		if (rtsub_sessions_close_all() > 0)
		{
			TimestampTz start = GetCurrentTimestamp();

			while (rtsub_sessions_count() > 0 &&
				   !TimestampDifferenceExceeds(start, GetCurrentTimestamp(),
											   SHUTDOWN_CLOSE_WAIT_MS))
			{
				uv.run(loop, UV_RUN_NOWAIT);
				if (rtsub_sessions_count() > 0)
					pg_usleep(1000L);
			}
		}
		lws_context_destroy(context);
		context = NULL;
		/* let the loop run the close callbacks of lws's handles */
		for (i = 0; i < 100 && uv.loop_close(loop) == UV_EBUSY; i++)
			uv.run(loop, UV_RUN_NOWAIT);
		callback_depth--;
		if (i < 100)
		{
			free(loop);
			loop = NULL;
		}
	}
}

/* whether lws or libuv code is on the stack (for the exit callback) */
bool
rtsub_ws_in_callback(void)
{
	return callback_depth > 0;
}

/*
 * Write a complete response: status, content type, no-store caching and
 * the body.  Returns -1 when the connection must close, else 0.
 */
static int
send_response(struct lws *wsi, unsigned int status, const char *content_type,
			  const char *body, size_t body_len)
{
	unsigned char headers[LWS_PRE + 512];
	unsigned char *start = headers + LWS_PRE;
	unsigned char *p = start;
	unsigned char *end = headers + sizeof(headers) - 1;
	unsigned char *payload;
	uint64		sent;

	if (lws_add_http_common_headers(wsi, status, content_type, body_len, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "cache-control:",
									(const unsigned char *) "no-store", 8, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "x-content-type-options:",
									(const unsigned char *) "nosniff", 7, &p, end))
		return -1;
	if (status == HTTP_STATUS_METHOD_NOT_ALLOWED &&
		lws_add_http_header_by_name(wsi, (const unsigned char *) "allow:",
									(const unsigned char *) "GET", 3, &p, end))
		return -1;
	if (status == HTTP_STATUS_UNAUTHORIZED &&
		lws_add_http_header_by_name(wsi, (const unsigned char *) "www-authenticate:",
									(const unsigned char *) BEARER_CHALLENGE,
									(int) strlen(BEARER_CHALLENGE), &p, end))
		return -1;
	if (lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	sent = p - start;			/* the headers, as written */

	/* lws_write() wants LWS_PRE bytes of headroom; it copies what it cannot send */
	payload = malloc(LWS_PRE + body_len + 1);
	if (payload == NULL)
		return -1;
	memcpy(payload + LWS_PRE, body, body_len);
	if (lws_write(wsi, payload + LWS_PRE, body_len, LWS_WRITE_HTTP_FINAL) != (int) body_len)
	{
		free(payload);
		return -1;
	}
	free(payload);
	sent += body_len;
	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->bytes_sent, sent);

	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* JSON error body {"error":{"code":...,"message":...}} */
static void
error_body(StringInfo buf, const char *code, const char *message)
{
	appendStringInfo(buf, "{\"error\":{\"code\":\"%s\",\"message\":", code);
	escape_json(buf, message);
	appendStringInfoString(buf, "}}");
}

/* an error response with a JSON body; see ws_server.h */
int
rtsub_http_error(struct lws *wsi, int status, const char *code, const char *message)
{
	StringInfoData buf;
	int			rc;

	initStringInfo(&buf);
	error_body(&buf, code, message);
	rc = send_response(wsi, status, "application/json", buf.data, buf.len);
	pfree(buf.data);
	return rc;
}

/* body of GET /healthz */
static void
healthz_body(StringInfo buf)
{
	TimestampTz started_at = 0;
	long		uptime_s = 0;

	if (rtsub_shared)
	{
		SpinLockAcquire(&rtsub_shared->mutex);
		started_at = rtsub_shared->started_at;
		SpinLockRelease(&rtsub_shared->mutex);
	}
	if (started_at != 0)
		uptime_s = TimestampDifferenceMilliseconds(started_at, GetCurrentTimestamp()) / 1000;
	appendStringInfo(buf, "{\"status\":\"ok\",\"pid\":%d,\"uptime_s\":%ld}",
					 MyProcPid, uptime_s);
}

/* one Prometheus metric with its HELP and TYPE lines */
static void
metric(StringInfo buf, const char *name, const char *type, const char *help,
	   uint64 value)
{
	appendStringInfo(buf, "# HELP %s %s\n# TYPE %s %s\n%s " UINT64_FORMAT "\n",
					 name, help, name, type, name, value);
}

/* body of GET /metrics (Prometheus text exposition format 0.0.4) */
static void
metrics_body(StringInfo buf)
{
	metric(buf, "rtsub_up", "gauge", "Whether the rtsub server is serving.", 1);
	metric(buf, "rtsub_http_requests_total", "counter",
		   "HTTP requests received.",
		   pg_atomic_read_u64(&rtsub_shared->http_requests));
	metric(buf, "rtsub_connections_accepted_total", "counter",
		   "Client connections accepted.",
		   pg_atomic_read_u64(&rtsub_shared->connections_accepted));
	metric(buf, "rtsub_connections_rejected_total", "counter",
		   "Client connections refused (rtsub.max_connections reached).",
		   pg_atomic_read_u64(&rtsub_shared->connections_rejected));
	metric(buf, "rtsub_connections_open", "gauge",
		   "Client connections currently open.", (uint64) open_connections);
	metric(buf, "rtsub_bytes_sent_total", "counter",
		   "Bytes sent to clients (HTTP headers and bodies, WebSocket message payloads).",
		   pg_atomic_read_u64(&rtsub_shared->bytes_sent));
	metric(buf, "rtsub_ws_sessions_accepted_total", "counter",
		   "WebSocket sessions accepted (upgrades completed).",
		   pg_atomic_read_u64(&rtsub_shared->ws_sessions_accepted));
	metric(buf, "rtsub_ws_sessions_refused_total", "counter",
		   "WebSocket upgrades refused (path, subprotocol, origin or token).",
		   pg_atomic_read_u64(&rtsub_shared->ws_sessions_refused));
	metric(buf, "rtsub_ws_sessions_open", "gauge",
		   "WebSocket sessions currently open.",
		   pg_atomic_read_u64(&rtsub_shared->ws_sessions_open));
	metric(buf, "rtsub_sse_sessions_accepted_total", "counter",
		   "Server-Sent Events streams opened.",
		   pg_atomic_read_u64(&rtsub_shared->sse_sessions_accepted));
	metric(buf, "rtsub_sse_sessions_refused_total", "counter",
		   "Server-Sent Events requests refused (origin, token, subscription or parameters).",
		   pg_atomic_read_u64(&rtsub_shared->sse_sessions_refused));
	metric(buf, "rtsub_sse_sessions_open", "gauge",
		   "Server-Sent Events streams currently open.",
		   pg_atomic_read_u64(&rtsub_shared->sse_sessions_open));
	metric(buf, "rtsub_ws_auth_failures_total", "counter",
		   "Tokens or roles rejected, at the handshake or SSE request, in auth or refresh messages, or by the auth timeout.",
		   pg_atomic_read_u64(&rtsub_shared->ws_auth_failures));
	metric(buf, "rtsub_ws_slow_consumers_total", "counter",
		   "WebSocket sessions or SSE streams closed because their send queue passed rtsub.max_send_buffer.",
		   pg_atomic_read_u64(&rtsub_shared->ws_slow_consumers));
	metric(buf, "rtsub_messages_received_total", "counter",
		   "Complete messages received from WebSocket clients.",
		   pg_atomic_read_u64(&rtsub_shared->messages_received));
	metric(buf, "rtsub_messages_sent_total", "counter",
		   "Messages sent to WebSocket clients, and events to SSE clients.",
		   pg_atomic_read_u64(&rtsub_shared->messages_sent));
	metric(buf, "rtsub_changes_decoded_total", "counter",
		   "Changes of published tables decoded from the server's slot.",
		   pg_atomic_read_u64(&rtsub_shared->changes_decoded));
	metric(buf, "rtsub_stream_errors_total", "counter",
		   "Errors that restarted the decoding of the server's slot.",
		   pg_atomic_read_u64(&rtsub_shared->stream_errors));
	{
		XLogRecPtr	upto = pg_atomic_read_u64(&rtsub_shared->stream_read_upto);
		XLogRecPtr	flush = GetFlushRecPtr(NULL);

		metric(buf, "rtsub_stream_lag_bytes", "gauge",
			   "WAL flushed but not yet decoded by the server.",
			   (upto != InvalidXLogRecPtr && flush > upto) ? flush - upto : 0);
	}
	{
		static const double bounds[] = RTSUB_LATENCY_BUCKETS_MS;
		uint64		cumulative = 0;

		appendStringInfoString(buf,
							   "# HELP rtsub_commit_to_send_seconds Time from a transaction's commit to the server writing its change to a client's socket.\n"
							   "# TYPE rtsub_commit_to_send_seconds histogram\n");
		for (int i = 0; i <= RTSUB_LATENCY_NBUCKETS; i++)
		{
			cumulative += pg_atomic_read_u64(&rtsub_shared->latency_bucket[i]);
			if (i < RTSUB_LATENCY_NBUCKETS)
				appendStringInfo(buf, "rtsub_commit_to_send_seconds_bucket{le=\"%g\"} " UINT64_FORMAT "\n",
								 bounds[i] / 1000.0, cumulative);
			else
				appendStringInfo(buf, "rtsub_commit_to_send_seconds_bucket{le=\"+Inf\"} " UINT64_FORMAT "\n",
								 cumulative);
		}
		appendStringInfo(buf, "rtsub_commit_to_send_seconds_sum %.6f\n"
						 "rtsub_commit_to_send_seconds_count " UINT64_FORMAT "\n",
						 pg_atomic_read_u64(&rtsub_shared->latency_sum_us) / 1e6, cumulative);
	}
}

/* answer one HTTP request; errors become a 500 response */
static int
handle_http_request(struct lws *wsi, HttpSession *session, const char *uri)
{
	static const char internal_error[] =
		"{\"error\":{\"code\":\"internal_error\",\"message\":\"internal server error\"}}";
	MemoryContext oldcxt = CurrentMemoryContext;
	StringInfo volatile body = NULL;
	volatile unsigned int status = HTTP_STATUS_OK;
	const char *volatile content_type = "application/json";
	bool		is_get;

	if (rtsub_shared)
		pg_atomic_fetch_add_u64(&rtsub_shared->http_requests, 1);
	is_get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;

	/* a refused request with a body is answered once the body is read */
	if (!is_get && lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0)
	{
		char		cl[32];

		if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
			strtoll(cl, NULL, 10) > 0)
		{
			session->deferred_status = HTTP_STATUS_METHOD_NOT_ALLOWED;
			session->body_bytes = 0;
			return 0;
		}
	}

	/* Server-Sent Events: session.c answers (and catches its errors) */
	if (is_get && strcmp(uri, "/v1/sse") == 0)
		return rtsub_sse_request(wsi, &session->sse);
	if (lws_hdr_total_length(wsi, WSI_TOKEN_OPTIONS_URI) > 0 && strcmp(uri, "/v1/sse") == 0)
		return rtsub_sse_preflight(wsi);

	PG_TRY();
	{
		StringInfo	buf = makeStringInfo();

		if (!is_get)
		{
			status = HTTP_STATUS_METHOD_NOT_ALLOWED;
			error_body(buf, "method_not_allowed", "only GET is supported here");
		}
		else if (strcmp(uri, "/healthz") == 0)
			healthz_body(buf);
		else if (strcmp(uri, "/metrics") == 0)
		{
			content_type = "text/plain; version=0.0.4";
			metrics_body(buf);
		}
		else if (strcmp(uri, "/v1/ws") == 0)
		{
			status = 426;		/* Upgrade Required */
			error_body(buf, "upgrade_required",
					   "this is a WebSocket endpoint: upgrade with subprotocol rtsub.v1.json or rtsub.v1.msgpack");
		}
		else
		{
			status = HTTP_STATUS_NOT_FOUND;
			error_body(buf, "not_found", "no such resource");
		}
		body = buf;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		body = NULL;
	}
	PG_END_TRY();

	if (body == NULL)
		return send_response(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR,
							 "application/json", internal_error,
							 strlen(internal_error));
	return send_response(wsi, status, content_type, body->data, body->len);
}

/* the HTTP protocol's callback (protocol 0: also gets the wsi lifecycle) */
static int
http_callback(struct lws *wsi, enum lws_callback_reasons reason,
			  void *user, void *in, size_t len)
{
	HttpSession *session = (HttpSession *) user;
	static const char refused[] =
		"{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"only GET is supported here\"}}";

	switch (reason)
	{
		case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
			if (open_connections >= rtsub_max_connections)
			{
				if (rtsub_shared)
					pg_atomic_fetch_add_u64(&rtsub_shared->connections_rejected, 1);
				return 1;
			}
			return 0;

		case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
			open_connections++;
			lws_set_opaque_user_data(wsi, &client_connection_marker);
			if (rtsub_shared)
				pg_atomic_fetch_add_u64(&rtsub_shared->connections_accepted, 1);
			return 0;

		case LWS_CALLBACK_WSI_DESTROY:
			{
				/* always delivered here, with the bound protocol's user data */
				const struct lws_protocols *p = lws_get_protocol(wsi);

				if (p != NULL && p->callback == rtsub_session_callback)
					rtsub_session_wsi_destroy(user);
				else if (p != NULL && p->callback == http_callback &&
						 session != NULL && session->sse != NULL)
				{
					void	   *sse = session->sse;

					session->sse = NULL;
					rtsub_sse_closed(sse);
				}
			}
			if (lws_get_opaque_user_data(wsi) == &client_connection_marker)
			{
				lws_set_opaque_user_data(wsi, NULL);
				open_connections--;
			}
			return 0;

		case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
			/* a WebSocket upgrade without a subprotocol of ours: refused */
			return rtsub_session_refuse_upgrade(wsi);

		case LWS_CALLBACK_HTTP:
			if (session == NULL)
				return -1;
			return handle_http_request(wsi, session, (const char *) in);

		case LWS_CALLBACK_HTTP_WRITEABLE:
			if (session != NULL && session->sse != NULL)
				return rtsub_sse_writeable(wsi, session->sse);
			return lws_callback_http_dummy(wsi, reason, user, in, len);

		case LWS_CALLBACK_CLOSED_HTTP:
			if (session != NULL && session->sse != NULL)
			{
				void	   *sse = session->sse;

				session->sse = NULL;
				rtsub_sse_closed(sse);
			}
			return lws_callback_http_dummy(wsi, reason, user, in, len);

		case LWS_CALLBACK_HTTP_BODY:
			if (session == NULL)
				return -1;
			session->body_bytes += len;
			if (session->body_bytes > MAX_DISCARDED_BODY)
				return -1;		/* not worth reading: close */
			return 0;

		case LWS_CALLBACK_HTTP_BODY_COMPLETION:
			if (session && session->deferred_status)
			{
				session->deferred_status = 0;
				return send_response(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED,
									 "application/json", refused, strlen(refused));
			}
			return lws_callback_http_dummy(wsi, reason, user, in, len);

		default:
			return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}
