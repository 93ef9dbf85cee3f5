/*-------------------------------------------------------------------------
 *
 * config.h
 *	  The rtsub server's settings ("rtsub.*"), defined by
 *	  rtsub_define_settings() in config.c, which _PG_init calls.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_CONFIG_H
#define RTSUB_CONFIG_H

/* algorithm bits of rtsub_jwt_allowed_algorithms */
#define RTSUB_JWT_HS256		0x01
#define RTSUB_JWT_HS384		0x02
#define RTSUB_JWT_HS512		0x04
#define RTSUB_JWT_RS256		0x08
#define RTSUB_JWT_ES256		0x10
#define RTSUB_JWT_HS_ANY	(RTSUB_JWT_HS256 | RTSUB_JWT_HS384 | RTSUB_JWT_HS512)
#define RTSUB_JWT_PK_ANY	(RTSUB_JWT_RS256 | RTSUB_JWT_ES256)

/* where the server listens and what it streams (PGC_POSTMASTER) */
extern char *rtsub_listen_address;
extern int	rtsub_port;
extern char *rtsub_database;
extern char *rtsub_slot_name;

/* JWT verification (PGC_SUSET: reloadable, and settable by superusers) */
extern char *rtsub_jwt_secret;
extern bool rtsub_jwt_secret_base64;
extern char *rtsub_jwt_public_key_file;
extern char *rtsub_jwt_algorithms;
extern int	rtsub_jwt_allowed_algorithms;	/* RTSUB_JWT_* bits of the above */
extern char *rtsub_jwt_audience;
extern char *rtsub_jwt_issuer;
extern int	rtsub_jwt_leeway;	/* seconds */
extern char *rtsub_jwt_role_claim;

/* limits and behaviour of the server (PGC_SIGHUP) */
extern int	rtsub_max_connections;
extern int	rtsub_max_subscriptions_per_connection;
extern int	rtsub_max_message_size; /* bytes */
extern int	rtsub_max_send_buffer;	/* bytes per connection */
extern int	rtsub_max_messages_per_second;	/* per connection; 0 = no limit */
extern int	rtsub_heartbeat_interval;	/* milliseconds; 0 = none */
extern char *rtsub_allowed_origins;
extern bool rtsub_audit_log;
extern bool rtsub_audit_table;

/* exactness: resume window, snapshots, large changes */
extern int	rtsub_resume_window;	/* seconds */
extern int	rtsub_resume_window_size;	/* kB */
extern int	rtsub_max_snapshot_workers; /* PGC_POSTMASTER */
extern int	rtsub_max_change_size;	/* bytes */

extern void rtsub_define_settings(void);

#endif							/* RTSUB_CONFIG_H */
