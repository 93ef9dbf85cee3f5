/*-------------------------------------------------------------------------
 *
 * auth_jwt.h
 *	  JWT verification of the rtsub server's clients (auth_jwt.c): pinned
 *	  algorithms, keys from the rtsub.jwt_* settings, signature and claims
 *	  checks.  Usable without a transaction; libjwt's allocations never
 *	  escape, results are palloc'd in CurrentMemoryContext.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_AUTH_JWT_H
#define RTSUB_AUTH_JWT_H

#include "postgres.h"

/* longest token accepted (bytes); longer ones are RTSUB_AUTH_MALFORMED */
#define RTSUB_JWT_MAX_TOKEN_LENGTH	16384

typedef enum RtsubAuthError
{
	RTSUB_AUTH_OK,
	RTSUB_AUTH_MALFORMED,		/* not a well-formed signed JWT */
	RTSUB_AUTH_BAD_ALGORITHM,	/* alg none, unknown, or not configured */
	RTSUB_AUTH_BAD_SIGNATURE,	/* signature does not verify */
	RTSUB_AUTH_EXPIRED,			/* exp + leeway <= now */
	RTSUB_AUTH_NOT_YET_VALID,	/* nbf > now + leeway */
	RTSUB_AUTH_ISSUED_IN_FUTURE,	/* iat > now + leeway */
	RTSUB_AUTH_BAD_AUDIENCE,	/* rtsub.jwt_audience not in aud */
	RTSUB_AUTH_BAD_ISSUER,		/* iss differs from rtsub.jwt_issuer */
	RTSUB_AUTH_NO_ROLE,			/* role claim missing or not a string */
	RTSUB_AUTH_NO_KEY,			/* no key configured for the token's alg */
	RTSUB_AUTH_MISSING_EXP		/* the token has no exp claim */
} RtsubAuthError;

typedef struct RtsubToken
{
	char	   *claims_json;	/* the payload, exactly as signed (UTF-8) */
	char	   *role;			/* the rtsub.jwt_role_claim claim */
	char	   *sub;			/* the sub claim, or NULL */
	int64		exp;			/* the exp claim (seconds since 1970) */
} RtsubToken;

/*
 * Verify TOKEN at time NOW_UNIX.  On RTSUB_AUTH_OK fills *OUT (palloc'd in
 * CurrentMemoryContext).  On failure *DETAIL (if DETAIL is not NULL) is set
 * to a lower-case English explanation, static or palloc'd.
 */
extern RtsubAuthError rtsub_verify_jwt(const char *token, int64 now_unix,
									   RtsubToken *out, const char **detail);

/* stable protocol code of an error, e.g. "token_expired" */
extern const char *rtsub_auth_error_code(RtsubAuthError e);

/* short lower-case description of an error, e.g. "token expired" */
extern const char *rtsub_auth_error_message(RtsubAuthError e);

/* re-read the key material from the settings (at startup and after SIGHUP) */
extern void rtsub_auth_reload(void);

#endif							/* RTSUB_AUTH_JWT_H */
