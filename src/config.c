/*-------------------------------------------------------------------------
 *
 * config.c
 *	  Owns every "rtsub.*" setting of the rtsub server: their definitions,
 *	  defaults, limits and check hooks.  rtsub_define_settings() is called
 *	  once from _PG_init.
 *
 *	  Contexts: where and what the server serves (address, port, database,
 *	  slot) is PGC_POSTMASTER.  The JWT settings are PGC_SUSET: a reload
 *	  (SIGHUP) applies them to the server, and a superuser can SET them in a
 *	  session to try tokens with rtsub.verify_token().  Limits, heartbeat,
 *	  origins and auditing are PGC_SIGHUP.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "nodes/pg_list.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "config.h"

char	   *rtsub_listen_address = NULL;
int			rtsub_port = 8710;
char	   *rtsub_database = NULL;
char	   *rtsub_slot_name = NULL;

char	   *rtsub_jwt_secret = NULL;
bool		rtsub_jwt_secret_base64 = false;
char	   *rtsub_jwt_public_key_file = NULL;
char	   *rtsub_jwt_algorithms = NULL;
int			rtsub_jwt_allowed_algorithms = RTSUB_JWT_HS256;
char	   *rtsub_jwt_audience = NULL;
char	   *rtsub_jwt_issuer = NULL;
int			rtsub_jwt_leeway = 30;
char	   *rtsub_jwt_role_claim = NULL;

int			rtsub_max_connections = 10000;
int			rtsub_max_subscriptions_per_connection = 100;
int			rtsub_max_message_size = 1024 * 1024;
int			rtsub_max_send_buffer = 16 * 1024 * 1024;
int			rtsub_resume_window = 600;
int			rtsub_resume_window_size = 64 * 1024;
int			rtsub_max_snapshot_workers = 2;
int			rtsub_max_change_size = 64 * 1024 * 1024;
int			rtsub_max_messages_per_second = 100;
int			rtsub_heartbeat_interval = 25000;
char	   *rtsub_allowed_origins = NULL;
bool		rtsub_audit_table = false;
bool		rtsub_audit_log = false;

/* the algorithms rtsub.jwt_algorithms may name */
static const struct
{
	const char *name;
	int			bit;
}			jwt_algorithm_names[] =
{
	{"HS256", RTSUB_JWT_HS256},
	{"HS384", RTSUB_JWT_HS384},
	{"HS512", RTSUB_JWT_HS512},
	{"RS256", RTSUB_JWT_RS256},
	{"ES256", RTSUB_JWT_ES256},
};

/* check hook of rtsub.jwt_algorithms: known names only, never "none" */
static bool
check_jwt_algorithms(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *names = NIL;
	ListCell   *lc;
	int			mask = 0;
	int		   *result;

	if (!SplitGUCList(raw, ',', &names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		goto fail;
	}
	foreach(lc, names)
	{
		const char *name = (const char *) lfirst(lc);
		int			i;
		bool		found = false;

		if (pg_strcasecmp(name, "none") == 0)
		{
			GUC_check_errdetail("Algorithm \"none\" (unsigned tokens) is never accepted.");
			goto fail;
		}
		for (i = 0; i < lengthof(jwt_algorithm_names); i++)
		{
			if (pg_strcasecmp(name, jwt_algorithm_names[i].name) == 0)
			{
				mask |= jwt_algorithm_names[i].bit;
				found = true;
				break;
			}
		}
		if (!found)
		{
			GUC_check_errdetail("Unrecognized algorithm: \"%s\".", name);
			GUC_check_errhint("The supported algorithms are HS256, HS384, HS512, RS256 and ES256.");
			goto fail;
		}
	}
	if (mask == 0)
	{
		GUC_check_errdetail("At least one algorithm must be listed.");
		goto fail;
	}

	/* guc.c releases "extra" with free() */
	result = (int *) malloc(sizeof(int));
	if (result == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		goto fail;
	}
	*result = mask;
	*extra = result;
	list_free(names);
	pfree(raw);
	return true;

fail:
	list_free(names);
	pfree(raw);
	return false;
}

/* assign hook of rtsub.jwt_algorithms: publish the bit mask */
static void
assign_jwt_algorithms(const char *newval, void *extra)
{
	rtsub_jwt_allowed_algorithms = *((int *) extra);
}

/* check hook of rtsub.allowed_origins: "*" or scheme://host[:port] items */
static bool
check_allowed_origins(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *items = NIL;
	ListCell   *lc;
	bool		ok = true;

	if (!SplitGUCList(raw, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		ok = false;
	}
	else
	{
		foreach(lc, items)
		{
			const char *item = (const char *) lfirst(lc);
			const char *sep = strstr(item, "://");
			const char *p;

			if (strcmp(item, "*") == 0)
				continue;
			if (sep == NULL || sep == item || sep[3] == '\0' ||
				strchr(sep + 3, '/') != NULL)
			{
				GUC_check_errdetail("Invalid origin: \"%s\".", item);
				GUC_check_errhint("List origins as scheme://host[:port] without a path (for example https://app.example.com), or \"*\" for any origin.");
				ok = false;
				break;
			}
			for (p = item; *p; p++)
			{
				if ((unsigned char) *p <= ' ' || *p == '"' || *p == 0x7f)
				{
					GUC_check_errdetail("Invalid origin: \"%s\".", item);
					ok = false;
					break;
				}
			}
			if (!ok)
				break;
		}
	}
	list_free(items);
	pfree(raw);
	return ok;
}

/* check hook of rtsub.slot_name: a valid replication slot name */
static bool
check_slot_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (**newval == '\0' || strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("A replication slot name must have 1 to %d characters.",
							NAMEDATALEN - 1);
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
		{
			GUC_check_errdetail("Replication slot names may only contain lower case letters, numbers and the underscore character.");
			return false;
		}
	}
	return true;
}

/* check hook of settings that must not be empty */
static bool
check_not_empty(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0')
	{
		GUC_check_errdetail("The value must not be empty.");
		return false;
	}
	return true;
}

/* define every rtsub.* setting; called once from _PG_init */
void
rtsub_define_settings(void)
{
	/*
	 * Where the server listens and what it streams.  PostgreSQL allows
	 * PGC_POSTMASTER settings only while preloading (later it is a FATAL
	 * error); loaded any other way (as the output plugin, or for the SQL
	 * functions) there is no server, and these keep their defaults.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomStringVariable("rtsub.listen_address",
								   "Host name or IP address the rtsub server listens on.",
								   "\"*\" listens on every interface.",
								   &rtsub_listen_address,
								   "localhost",
								   PGC_POSTMASTER, 0,
								   check_not_empty, NULL, NULL);
		DefineCustomIntVariable("rtsub.port",
								"TCP port of the rtsub server (WebSocket and Server-Sent Events).",
								"0 disables the server.",
								&rtsub_port,
								8710, 0, 65535,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
		DefineCustomStringVariable("rtsub.database",
								   "Database whose changes the rtsub server streams.",
								   "The rtsub extension must be installed in it.",
								   &rtsub_database,
								   "postgres",
								   PGC_POSTMASTER, 0,
								   check_not_empty, NULL, NULL);
		DefineCustomStringVariable("rtsub.slot_name",
								   "Logical replication slot the rtsub server consumes.",
								   "The slot uses the rtsub output plugin.",
								   &rtsub_slot_name,
								   "rtsub",
								   PGC_POSTMASTER, 0,
								   check_slot_name, NULL, NULL);
		DefineCustomIntVariable("rtsub.max_snapshot_workers",
								"Maximum number of processes reading initial snapshots for the rtsub server at once.",
								"Further snapshot requests wait for one of them; each counts against max_worker_processes.",
								&rtsub_max_snapshot_workers,
								2, 1, 64,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	}

	/* JWT verification */
	DefineCustomStringVariable("rtsub.jwt_secret",
							   "Shared secret that verifies HS256, HS384 and HS512 tokens.",
							   "Use at least 32 random bytes.  Only superusers can see it.",
							   &rtsub_jwt_secret,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("rtsub.jwt_secret_base64",
							 "Whether rtsub.jwt_secret is base64-encoded (standard or URL-safe alphabet).",
							 NULL,
							 &rtsub_jwt_secret_base64,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("rtsub.jwt_public_key_file",
							   "PEM file with the public key that verifies RS256 or ES256 tokens.",
							   "A \"BEGIN PUBLIC KEY\" block (RSA or P-256 EC key); a relative path is relative to the data directory.",
							   &rtsub_jwt_public_key_file,
							   "",
							   PGC_SUSET, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("rtsub.jwt_algorithms",
							   "Comma-separated list of the token signature algorithms accepted.",
							   "Any of HS256, HS384, HS512 (verified with rtsub.jwt_secret), RS256 and ES256 (verified with rtsub.jwt_public_key_file).",
							   &rtsub_jwt_algorithms,
							   "HS256",
							   PGC_SUSET, GUC_LIST_INPUT,
							   check_jwt_algorithms, assign_jwt_algorithms, NULL);
	DefineCustomStringVariable("rtsub.jwt_audience",
							   "Audience a token's \"aud\" claim must contain.",
							   "Empty: the \"aud\" claim is not checked.",
							   &rtsub_jwt_audience,
							   "",
							   PGC_SUSET, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("rtsub.jwt_issuer",
							   "Issuer a token's \"iss\" claim must equal.",
							   "Empty: the \"iss\" claim is not checked.",
							   &rtsub_jwt_issuer,
							   "",
							   PGC_SUSET, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.jwt_leeway",
							"Clock skew tolerated when checking a token's \"exp\", \"nbf\" and \"iat\" claims.",
							NULL,
							&rtsub_jwt_leeway,
							30, 0, 3600,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomStringVariable("rtsub.jwt_role_claim",
							   "Name of the token claim that holds the client's role.",
							   "Tokens without this claim (a non-empty string) are rejected.",
							   &rtsub_jwt_role_claim,
							   "role",
							   PGC_SUSET, 0,
							   check_not_empty, NULL, NULL);

	/* limits */
	DefineCustomIntVariable("rtsub.max_connections",
							"Maximum number of concurrent clients of the rtsub server.",
							NULL,
							&rtsub_max_connections,
							10000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.max_subscriptions_per_connection",
							"Maximum number of subscriptions one client connection may open.",
							NULL,
							&rtsub_max_subscriptions_per_connection,
							100, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.max_message_size",
							"Maximum size of a message a client may send to the rtsub server.",
							"Larger messages close the connection.",
							&rtsub_max_message_size,
							1024 * 1024, 1024, 64 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.max_send_buffer",
							"Maximum amount of data queued for one client that does not read fast enough.",
							"A client whose queue exceeds it is disconnected and must resume.",
							&rtsub_max_send_buffer,
							16 * 1024 * 1024, 64 * 1024, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.max_messages_per_second",
							"Maximum rate of messages one client connection may send to the rtsub server.",
							"0 disables the limit.",
							&rtsub_max_messages_per_second,
							100, 0, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.heartbeat_interval",
							"Time between heartbeats the rtsub server sends to idle clients.",
							"0 disables heartbeats.",
							&rtsub_heartbeat_interval,
							25000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("rtsub.allowed_origins",
							   "Comma-separated list of the web origins allowed to connect to the rtsub server.",
							   "Items are scheme://host[:port] or \"*\" for any origin.  Empty: only requests without an Origin header or from the server's own host.",
							   &rtsub_allowed_origins,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   check_allowed_origins, NULL, NULL);
	DefineCustomIntVariable("rtsub.resume_window",
							"How long the rtsub server keeps changes for clients that resume.",
							"A client that resumes after an older event gets a reset.  The server's slot keeps the WAL of this window.",
							&rtsub_resume_window,
							600, 0, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.resume_window_size",
							"How much decoded change data the rtsub server keeps for clients that resume.",
							"The window ends at whichever of rtsub.resume_window and this limit comes first; it is held in the server's memory.",
							&rtsub_resume_window_size,
							64 * 1024, 0, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("rtsub.max_change_size",
							"Largest change message the rtsub server sends to a client.",
							"A larger change is reported to the subscriber as error change_too_large, followed by a reset.",
							&rtsub_max_change_size,
							64 * 1024 * 1024, 1024, 1024 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("rtsub.audit_table",
							 "Records every connection, authentication failure and subscription of the rtsub server in the table rtsub.audit_log.",
							 "Rows are written by the server a batch at a time; see also rtsub.audit_log.",
							 &rtsub_audit_table,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("rtsub.audit_log",
							 "Logs every connection, authentication failure and subscription of the rtsub server.",
							 NULL,
							 &rtsub_audit_log,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
}
