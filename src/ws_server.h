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
 * Between ws_server.c and session.c (the WebSocket sessions); only for
 * files that include <libwebsockets.h> first.
 */
#ifdef LWS_PRE
extern int	rtsub_session_callback(struct lws *wsi, enum lws_callback_reasons reason,
								   void *user, void *in, size_t len);
extern int	rtsub_session_refuse_upgrade(struct lws *wsi);
extern void rtsub_session_wsi_destroy(void *user);
extern int	rtsub_sessions_close_all(void);
extern int	rtsub_sessions_count(void);
#endif

#endif							/* RTSUB_WS_SERVER_H */
