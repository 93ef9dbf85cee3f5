/*-------------------------------------------------------------------------
 *
 * ws_server.h
 *	  The rtsub server's network side (libwebsockets): start, the fd and
 *	  timeout the worker's wait loop waits on, service, stop.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_WS_SERVER_H
#define RTSUB_WS_SERVER_H

#include "postgres.h"

extern bool rtsub_ws_start(const char *listen_address, int port, char **error);
extern int	rtsub_ws_port(void);
extern int	rtsub_ws_wait_fd(void);
extern long rtsub_ws_timeout(long max_ms);
extern void rtsub_ws_service(void);
extern void rtsub_ws_stop(void);
extern bool rtsub_ws_in_callback(void);

/*
 * Between ws_server.c and session.c (WebSocket and SSE sessions); only for
 * files that include <libwebsockets.h> first.
 */
#ifdef LWS_PRE
extern int	rtsub_session_callback(struct lws *wsi, enum lws_callback_reasons reason,
								   void *user, void *in, size_t len);
extern int	rtsub_session_refuse_upgrade(struct lws *wsi);
extern void rtsub_session_wsi_destroy(void *user);
extern int	rtsub_sessions_close_all(void);
extern int	rtsub_sessions_count(void);

/* Server-Sent Events streams (GET /v1/sse) */
extern int	rtsub_sse_request(struct lws *wsi, void **handle);
extern int	rtsub_sse_preflight(struct lws *wsi);
extern int	rtsub_sse_writeable(struct lws *wsi, void *handle);
extern void rtsub_sse_closed(void *handle);

/* an HTTP error response with a JSON body {"error":{"code","message"}} */
extern int	rtsub_http_error(struct lws *wsi, int status, const char *code,
							 const char *message);
#endif

#endif							/* RTSUB_WS_SERVER_H */
