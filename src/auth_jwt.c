/*-------------------------------------------------------------------------
 *
 * auth_jwt.c
 *	  Owns JWT verification for the rtsub server: the key material loaded
 *	  from the rtsub.jwt_* settings, rtsub_verify_jwt() and the SQL
 *	  function rtsub.verify_token().
 *
 *	  libjwt 1.10 trusts the token's "alg" header and checks no claims, so
 *	  this file does the security-relevant work itself, before and after
 *	  libjwt's signature check:
 *	  - the token is bounded, split and its header and payload decoded and
 *		parsed here (PostgreSQL's JSON parser, nesting bounded);
 *	  - the algorithm must be one of rtsub.jwt_algorithms ("none" never);
 *	  - the key is chosen by the algorithm's family: the HMAC secret for
 *		HS*, the public key (of the matching type) for RS256/ES256, so a
 *		public key is never used as an HMAC secret;
 *	  - jwt_decode() is only ever called with a key (without one, libjwt
 *		accepts any signature), and the algorithm it saw is checked again;
 *	  - exp (required), nbf, iat, aud and iss are checked here.
 *	  The claims returned are the payload exactly as signed.
 *
 *	  libjwt allocates with malloc: its objects are freed with jwt_free()
 *	  and never mixed with palloc'd memory.
 *
 *	  libjwt is loaded with dlopen(RTLD_DEEPBIND), not linked: it parses
 *	  JSON with jansson, whose json_object() has the same name as the
 *	  postgres executable's SQL function json_object(); linked normally,
 *	  libjwt's and jansson's calls bind to PostgreSQL's function and crash.
 *	  DEEPBIND makes libjwt and its dependencies resolve their own symbols
 *	  first.  So nothing in rtsub.so may call libjwt directly (with
 *	  --as-needed, rtsub.so then does not load it at all).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jwt.h>

#include "common/base64.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "auth_jwt.h"
#include "config.h"

/* deepest JSON nesting accepted in a token's header or payload */
#define JWT_MAX_JSON_DEPTH		64
/* largest public key file read */
#define JWT_MAX_KEY_FILE		(64 * 1024)
/* recommended minimum length of an HMAC secret (bytes) */
#define JWT_MIN_SECRET_LENGTH	32

#define PEM_BEGIN	"-----BEGIN PUBLIC KEY-----"
#define PEM_END		"-----END PUBLIC KEY-----"

typedef enum PublicKeyType
{
	PK_NONE,
	PK_RSA,
	PK_EC_P256
} PublicKeyType;

/* the algorithms verified, with their libjwt ids and key families */
typedef struct JwtAlgorithm
{
	const char *name;
	int			bit;			/* RTSUB_JWT_* */
	jwt_alg_t	libjwt_alg;
	PublicKeyType pk_type;		/* PK_NONE: HMAC with the secret */
} JwtAlgorithm;

static const JwtAlgorithm jwt_algorithms[] =
{
	{"HS256", RTSUB_JWT_HS256, JWT_ALG_HS256, PK_NONE},
	{"HS384", RTSUB_JWT_HS384, JWT_ALG_HS384, PK_NONE},
	{"HS512", RTSUB_JWT_HS512, JWT_ALG_HS512, PK_NONE},
	{"RS256", RTSUB_JWT_RS256, JWT_ALG_RS256, PK_RSA},
	{"ES256", RTSUB_JWT_ES256, JWT_ALG_ES256, PK_EC_P256},
};

/* libjwt's shared object, loaded on first use */
#ifndef RTSUB_LIBJWT_SONAME
#define RTSUB_LIBJWT_SONAME "libjwt.so.0"
#endif
typedef int (*jwt_decode_fn) (jwt_t **jwt, const char *token,
							  const unsigned char *key, int key_len);
typedef void (*jwt_free_fn) (jwt_t *jwt);
typedef jwt_alg_t (*jwt_get_alg_fn) (jwt_t *jwt);
static jwt_decode_fn p_jwt_decode = NULL;
static jwt_free_fn p_jwt_free = NULL;
static jwt_get_alg_fn p_jwt_get_alg = NULL;
static bool libjwt_tried = false;

/* key material (malloc'd, scrubbed when replaced) */
static unsigned char *hs_key = NULL;
static int	hs_key_len = 0;
static char *pk_pem = NULL;
static int	pk_pem_len = 0;
static PublicKeyType pk_type = PK_NONE;
static bool keys_loaded = false;

/* claims looked at while parsing the payload (bits of ClaimsState.which) */
#define CLAIM_EXP	0x01
#define CLAIM_NBF	0x02
#define CLAIM_IAT	0x04
#define CLAIM_AUD	0x08
#define CLAIM_ISS	0x10
#define CLAIM_SUB	0x20
#define CLAIM_ROLE	0x40

/* what the payload parser found */
typedef struct ClaimsState
{
	int			depth;			/* nesting depth; 1 = in the top object */
	bool		is_object;		/* the payload is a JSON object */
	int			which;			/* CLAIM_* bits of the current top field */
	int			seen;			/* CLAIM_* bits seen so far */
	bool		in_aud_array;	/* inside a top-level "aud" array */
	const char *error;			/* first problem found, or NULL */
	const char *role_claim;		/* name of the role claim */
	const char *audience;		/* wanted audience, or NULL */
	double		exp,
				nbf,
				iat;
	bool		aud_match;		/* the wanted audience was found */
	char	   *iss;
	char	   *sub;
	char	   *role;
	bool		role_not_string;
} ClaimsState;

/* what the header parser found */
typedef struct HeaderState
{
	int			depth;
	bool		is_object;
	int			field;			/* 1 alg, 2 typ, 0 other */
	char	   *alg;
	char	   *typ;
	bool		has_crit;
	const char *error;
} HeaderState;

/* release the loaded keys, scrubbing them */
static void
free_keys(void)
{
	if (hs_key != NULL)
	{
		explicit_bzero(hs_key, hs_key_len);
		free(hs_key);
	}
	hs_key = NULL;
	hs_key_len = 0;
	if (pk_pem != NULL)
	{
		explicit_bzero(pk_pem, pk_pem_len);
		free(pk_pem);
	}
	pk_pem = NULL;
	pk_pem_len = 0;
	pk_type = PK_NONE;
}

/* decode standard or URL-safe base64 (padding optional); NULL if invalid */
static char *
decode_base64_any(const char *src, int srclen, int *outlen)
{
	char	   *norm = palloc(srclen + 4);
	int			n = 0;
	int			i;
	char	   *out;
	int			len;

	for (i = 0; i < srclen; i++)
	{
		char		c = src[i];

		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			continue;
		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (c == '=')
			break;
		norm[n++] = c;
	}
	/* nothing but padding may follow padding */
	for (; i < srclen; i++)
	{
		if (src[i] != '=' && src[i] != ' ' && src[i] != '\t' &&
			src[i] != '\n' && src[i] != '\r')
		{
			pfree(norm);
			return NULL;
		}
	}
	if (n % 4 == 1)
	{
		pfree(norm);
		return NULL;
	}
	while (n % 4 != 0)
		norm[n++] = '=';
	out = palloc(pg_b64_dec_len(n) + 1);
	len = pg_b64_decode(norm, n, out, pg_b64_dec_len(n));
	pfree(norm);
	if (len < 0)
	{
		pfree(out);
		return NULL;
	}
	out[len] = '\0';
	*outlen = len;
	return out;
}

/* whether SRC is base64url text without padding */
static bool
is_base64url(const char *src, int srclen)
{
	int			i;

	for (i = 0; i < srclen; i++)
	{
		char		c = src[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			  (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return srclen % 4 != 1;
}

/* decode one base64url part of a token (no padding); NULL if invalid */
static char *
decode_part(const char *src, int srclen, int *outlen)
{
	if (srclen == 0 || !is_base64url(src, srclen))
		return NULL;
	return decode_base64_any(src, srclen, outlen);
}

/* nesting depth of a JSON text, counting brackets outside strings */
static int
json_depth(const char *s, int len)
{
	int			depth = 0;
	int			max = 0;
	bool		in_string = false;
	int			i;

	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > max)
				max = depth;
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return max;
}

/* whether decoded JSON text is safe to hand to the parser */
static bool
json_text_acceptable(const char *s, int len)
{
	/* valid UTF-8 without NUL bytes, and bounded nesting */
	return pg_verify_mbstr(PG_UTF8, s, len, true) &&
		json_depth(s, len) <= JWT_MAX_JSON_DEPTH;
}

/* header parser: object start */
static void
header_object_start(void *state)
{
	HeaderState *hs = (HeaderState *) state;

	if (hs->depth == 0)
		hs->is_object = true;
	else if (hs->depth == 1 && hs->field != 0)
		hs->error = "the \"alg\" and \"typ\" headers must be strings";
	hs->depth++;
}

/* header parser: array start */
static void
header_array_start(void *state)
{
	HeaderState *hs = (HeaderState *) state;

	if (hs->depth == 1 && hs->field != 0)
		hs->error = "the \"alg\" and \"typ\" headers must be strings";
	hs->depth++;
}

/* header parser: object or array end */
static void
header_end(void *state)
{
	((HeaderState *) state)->depth--;
}

/* header parser: a field name */
static void
header_field_start(void *state, char *fname, bool isnull)
{
	HeaderState *hs = (HeaderState *) state;

	if (hs->depth != 1)
		return;
	hs->field = 0;
	if (strcmp(fname, "alg") == 0)
	{
		if (hs->alg != NULL)
			hs->error = "duplicate \"alg\" header";
		hs->field = 1;
	}
	else if (strcmp(fname, "typ") == 0)
	{
		if (hs->typ != NULL)
			hs->error = "duplicate \"typ\" header";
		hs->field = 2;
	}
	else if (strcmp(fname, "crit") == 0)
		hs->has_crit = true;
	/* alg/typ given as an object or array leave the value NULL */
	if (hs->field == 1)
		hs->alg = "";
	else if (hs->field == 2)
		hs->typ = "";
}

/* header parser: a scalar */
static void
header_scalar(void *state, char *token, JsonTokenType tokentype)
{
	HeaderState *hs = (HeaderState *) state;

	if (hs->depth != 1 || hs->field == 0)
		return;
	if (tokentype != JSON_TOKEN_STRING)
	{
		hs->error = "the \"alg\" and \"typ\" headers must be strings";
		return;
	}
	if (hs->field == 1)
		hs->alg = token;
	else
		hs->typ = token;
}

/* parse the JSON text of a header or payload with SEM; false if invalid */
static bool
parse_json_text(char *text, int len, JsonSemAction *sem)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen(text, len, PG_UTF8, true);

	return pg_parse_json(lex, sem) == JSON_SUCCESS;
}

/* claims parser: object start */
static void
claims_object_start(void *state)
{
	ClaimsState *cs = (ClaimsState *) state;

	if (cs->depth == 0)
		cs->is_object = true;
	else if (cs->depth == 1 && cs->which != 0)
	{
		if (cs->which & CLAIM_ROLE)
			cs->role_not_string = true;
		if (cs->which & ~CLAIM_ROLE)
			cs->error = "a registered claim (exp, nbf, iat, aud, iss or sub) has an invalid type";
	}
	else if (cs->in_aud_array && cs->depth == 2)
		cs->error = "the \"aud\" claim must be a string or an array of strings";
	cs->depth++;
}

/* claims parser: array start */
static void
claims_array_start(void *state)
{
	ClaimsState *cs = (ClaimsState *) state;

	if (cs->depth == 1 && cs->which != 0)
	{
		if (cs->which & CLAIM_ROLE)
			cs->role_not_string = true;
		if (cs->which & CLAIM_AUD)
			cs->in_aud_array = true;
		if (cs->which & ~(CLAIM_ROLE | CLAIM_AUD))
			cs->error = "a registered claim (exp, nbf, iat, iss or sub) has an invalid type";
	}
	else if (cs->in_aud_array && cs->depth == 2)
		cs->error = "the \"aud\" claim must be a string or an array of strings";
	cs->depth++;
}

/* claims parser: object or array end */
static void
claims_end(void *state)
{
	ClaimsState *cs = (ClaimsState *) state;

	cs->depth--;
	if (cs->depth == 1)
		cs->in_aud_array = false;
}

/* claims parser: a top-level claim name */
static void
claims_field_start(void *state, char *fname, bool isnull)
{
	ClaimsState *cs = (ClaimsState *) state;
	int			which = 0;

	if (cs->depth != 1)
		return;
	if (strcmp(fname, "exp") == 0)
		which |= CLAIM_EXP;
	else if (strcmp(fname, "nbf") == 0)
		which |= CLAIM_NBF;
	else if (strcmp(fname, "iat") == 0)
		which |= CLAIM_IAT;
	else if (strcmp(fname, "aud") == 0)
		which |= CLAIM_AUD;
	else if (strcmp(fname, "iss") == 0)
		which |= CLAIM_ISS;
	else if (strcmp(fname, "sub") == 0)
		which |= CLAIM_SUB;
	if (strcmp(fname, cs->role_claim) == 0)
		which |= CLAIM_ROLE;
	if (cs->seen & which)
		cs->error = psprintf("duplicate claim \"%s\"", fname);
	cs->seen |= which;
	cs->which = which;
}

/* claims parser: end of a top-level claim */
static void
claims_field_end(void *state, char *fname, bool isnull)
{
	ClaimsState *cs = (ClaimsState *) state;

	if (cs->depth == 1)
		cs->which = 0;
}

/* parse a JSON number token as a NumericDate; false if not finite */
static bool
numeric_date(const char *token, double *result)
{
	char	   *end;
	double		d = strtod(token, &end);

	if (*end != '\0' || !isfinite(d))
		return false;
	*result = d;
	return true;
}

/* claims parser: a scalar */
static void
claims_scalar(void *state, char *token, JsonTokenType tokentype)
{
	ClaimsState *cs = (ClaimsState *) state;
	bool		is_string = (tokentype == JSON_TOKEN_STRING);
	bool		is_number = (tokentype == JSON_TOKEN_NUMBER);

	if (cs->in_aud_array && cs->depth == 2)
	{
		if (!is_string)
			cs->error = "the \"aud\" claim must be a string or an array of strings";
		else if (cs->audience != NULL && strcmp(token, cs->audience) == 0)
			cs->aud_match = true;
		return;
	}
	if (cs->depth != 1 || cs->which == 0)
		return;

	if (cs->which & CLAIM_EXP)
	{
		if (!is_number || !numeric_date(token, &cs->exp))
			cs->error = "the \"exp\" claim is not a number";
	}
	if (cs->which & CLAIM_NBF)
	{
		if (!is_number || !numeric_date(token, &cs->nbf))
			cs->error = "the \"nbf\" claim is not a number";
	}
	if (cs->which & CLAIM_IAT)
	{
		if (!is_number || !numeric_date(token, &cs->iat))
			cs->error = "the \"iat\" claim is not a number";
	}
	if (cs->which & CLAIM_AUD)
	{
		if (!is_string)
			cs->error = "the \"aud\" claim must be a string or an array of strings";
		else if (cs->audience != NULL && strcmp(token, cs->audience) == 0)
			cs->aud_match = true;
	}
	if (cs->which & CLAIM_ISS)
	{
		if (!is_string)
			cs->error = "the \"iss\" claim is not a string";
		else
			cs->iss = token;
	}
	if (cs->which & CLAIM_SUB)
	{
		if (!is_string)
			cs->error = "the \"sub\" claim is not a string";
		else
			cs->sub = token;
	}
	if (cs->which & CLAIM_ROLE)
	{
		if (!is_string)
			cs->role_not_string = true;
		else
			cs->role = token;
	}
}

/* read the public key file and keep its PEM block; false on problems */
static bool
load_public_key(const char *path)
{
	int			fd;
	struct stat st;
	char	   *buf;
	int			len;
	char	   *begin;
	char	   *end;
	char	   *der;
	int			der_len;
	int			block_len;
	PublicKeyType type = PK_NONE;
	static const unsigned char oid_rsa[] =
	{0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01};
	static const unsigned char oid_ec[] =
	{0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01};
	static const unsigned char oid_p256[] =
	{0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not open rtsub.jwt_public_key_file \"%s\": %m", path),
				 errhint("RS256 and ES256 tokens are rejected until the file is readable by the server.")));
		return false;
	}
	if (fstat(fd, &st) < 0 || st.st_size > JWT_MAX_KEY_FILE)
	{
		CloseTransientFile(fd);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("rtsub.jwt_public_key_file \"%s\" is not a PEM public key", path),
				 errdetail("The file could not be examined or is larger than %d bytes.", JWT_MAX_KEY_FILE)));
		return false;
	}
	buf = palloc(st.st_size + 1);
	len = read(fd, buf, st.st_size);
	CloseTransientFile(fd);
	if (len < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not read rtsub.jwt_public_key_file \"%s\": %m", path)));
		return false;
	}
	buf[len] = '\0';

	begin = strstr(buf, PEM_BEGIN);
	end = begin ? strstr(begin, PEM_END) : NULL;
	if (begin == NULL || end == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("rtsub.jwt_public_key_file \"%s\" contains no PEM public key", path),
				 errhint("The file must contain a \"%s\" block; convert an \"RSA PUBLIC KEY\" with: openssl rsa -RSAPublicKey_in -pubout.",
						 PEM_BEGIN)));
		return false;
	}
	der = decode_base64_any(begin + strlen(PEM_BEGIN),
							end - begin - strlen(PEM_BEGIN), &der_len);
	if (der != NULL && der_len > 16)
	{
		/* the algorithm identifier opens the SubjectPublicKeyInfo */
		int			window = Min(der_len, 40);

		if (memmem(der, window, oid_rsa, sizeof(oid_rsa)) != NULL)
			type = PK_RSA;
		else if (memmem(der, window, oid_ec, sizeof(oid_ec)) != NULL &&
				 memmem(der, window, oid_p256, sizeof(oid_p256)) != NULL)
			type = PK_EC_P256;
	}
	if (type == PK_NONE)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("rtsub.jwt_public_key_file \"%s\" holds no RSA or P-256 EC public key", path),
				 errhint("RS256 needs an RSA key and ES256 an EC key on curve P-256.")));
		return false;
	}

	block_len = end - begin + strlen(PEM_END);
	pk_pem = malloc(block_len + 2);
	if (pk_pem == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while loading rtsub.jwt_public_key_file")));
		return false;
	}
	memcpy(pk_pem, begin, block_len);
	pk_pem[block_len] = '\n';
	pk_pem[block_len + 1] = '\0';
	pk_pem_len = block_len + 1;
	pk_type = type;
	explicit_bzero(buf, len);
	return true;
}

/* load the HMAC secret from rtsub.jwt_secret; false on problems */
static bool
load_secret(const char *secret, bool base64)
{
	char	   *bytes;
	int			len;

	if (base64)
	{
		bytes = decode_base64_any(secret, strlen(secret), &len);
		if (bytes == NULL || len == 0)
		{
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rtsub.jwt_secret is not valid base64"),
					 errhint("HS256, HS384 and HS512 tokens are rejected until it is fixed or rtsub.jwt_secret_base64 is turned off.")));
			return false;
		}
	}
	else
	{
		bytes = pstrdup(secret);
		len = strlen(secret);
	}
	hs_key = malloc(len);
	if (hs_key == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while loading rtsub.jwt_secret")));
		return false;
	}
	memcpy(hs_key, bytes, len);
	hs_key_len = len;
	explicit_bzero(bytes, len);
	return true;
}

/* (re)load the keys from the settings; NOTES logs configuration advice */
static void
load_keys(bool notes)
{
	MemoryContext tmp;
	MemoryContext old;
	int			algs = rtsub_jwt_allowed_algorithms;

	free_keys();
	keys_loaded = true;
	tmp = AllocSetContextCreate(CurrentMemoryContext, "rtsub jwt keys",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(tmp);

	if (rtsub_jwt_secret != NULL && rtsub_jwt_secret[0] != '\0')
	{
		if (load_secret(rtsub_jwt_secret, rtsub_jwt_secret_base64) &&
			notes && (algs & RTSUB_JWT_HS_ANY) &&
			hs_key_len < JWT_MIN_SECRET_LENGTH)
			ereport(LOG,
					(errmsg("rtsub.jwt_secret is shorter than %d bytes",
							JWT_MIN_SECRET_LENGTH),
					 errhint("Use a random secret of at least %d bytes.",
							 JWT_MIN_SECRET_LENGTH)));
	}
	if (rtsub_jwt_public_key_file != NULL && rtsub_jwt_public_key_file[0] != '\0')
		load_public_key(rtsub_jwt_public_key_file);

	if (notes)
	{
		if ((algs & RTSUB_JWT_HS_ANY) && hs_key == NULL)
			ereport(LOG,
					(errmsg("rtsub.jwt_algorithms lists HMAC algorithms but no rtsub.jwt_secret is set"),
					 errhint("Such tokens are rejected.")));
		if (((algs & RTSUB_JWT_RS256) && pk_type != PK_RSA) ||
			((algs & RTSUB_JWT_ES256) && pk_type != PK_EC_P256))
			ereport(LOG,
					(errmsg("rtsub.jwt_algorithms lists RS256 or ES256 but rtsub.jwt_public_key_file provides no key of that type"),
					 errhint("Such tokens are rejected.")));
	}

	MemoryContextSwitchTo(old);
	MemoryContextDelete(tmp);
}

/* re-read the key material from the settings (startup and after SIGHUP) */
void
rtsub_auth_reload(void)
{
	load_keys(true);
}

/* stable protocol code of an error */
const char *
rtsub_auth_error_code(RtsubAuthError e)
{
	switch (e)
	{
		case RTSUB_AUTH_OK:
			return "ok";
		case RTSUB_AUTH_MALFORMED:
			return "token_malformed";
		case RTSUB_AUTH_BAD_ALGORITHM:
			return "token_bad_algorithm";
		case RTSUB_AUTH_BAD_SIGNATURE:
			return "token_bad_signature";
		case RTSUB_AUTH_EXPIRED:
			return "token_expired";
		case RTSUB_AUTH_NOT_YET_VALID:
			return "token_not_yet_valid";
		case RTSUB_AUTH_ISSUED_IN_FUTURE:
			return "token_issued_in_future";
		case RTSUB_AUTH_BAD_AUDIENCE:
			return "token_bad_audience";
		case RTSUB_AUTH_BAD_ISSUER:
			return "token_bad_issuer";
		case RTSUB_AUTH_NO_ROLE:
			return "token_no_role";
		case RTSUB_AUTH_NO_KEY:
			return "token_no_key";
		case RTSUB_AUTH_MISSING_EXP:
			return "token_missing_exp";
	}
	return "token_invalid";
}

/* short description of an error */
const char *
rtsub_auth_error_message(RtsubAuthError e)
{
	switch (e)
	{
		case RTSUB_AUTH_OK:
			return "token valid";
		case RTSUB_AUTH_MALFORMED:
			return "malformed token";
		case RTSUB_AUTH_BAD_ALGORITHM:
			return "algorithm not accepted";
		case RTSUB_AUTH_BAD_SIGNATURE:
			return "bad signature";
		case RTSUB_AUTH_EXPIRED:
			return "token expired";
		case RTSUB_AUTH_NOT_YET_VALID:
			return "token not yet valid";
		case RTSUB_AUTH_ISSUED_IN_FUTURE:
			return "token issued in the future";
		case RTSUB_AUTH_BAD_AUDIENCE:
			return "wrong audience";
		case RTSUB_AUTH_BAD_ISSUER:
			return "wrong issuer";
		case RTSUB_AUTH_NO_ROLE:
			return "no role claim";
		case RTSUB_AUTH_NO_KEY:
			return "no key for the token's algorithm";
		case RTSUB_AUTH_MISSING_EXP:
			return "token has no expiration time";
	}
	return "invalid token";
}

/* load libjwt with its own symbol scope; false (logged once) if impossible */
static bool
libjwt_load(void)
{
	void	   *handle;

	if (p_jwt_decode != NULL)
		return true;
	if (libjwt_tried)
		return false;
	libjwt_tried = true;
	handle = dlopen(RTSUB_LIBJWT_SONAME, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
	if (handle == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("could not load %s: %s", RTSUB_LIBJWT_SONAME, dlerror()),
				 errhint("Install libjwt (Debian package libjwt0); no token can be verified without it.")));
		return false;
	}
	p_jwt_free = (jwt_free_fn) dlsym(handle, "jwt_free");
	p_jwt_get_alg = (jwt_get_alg_fn) dlsym(handle, "jwt_get_alg");
	p_jwt_decode = (jwt_decode_fn) dlsym(handle, "jwt_decode");
	if (p_jwt_free == NULL || p_jwt_get_alg == NULL || p_jwt_decode == NULL)
	{
		p_jwt_decode = NULL;
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s lacks jwt_decode, jwt_free or jwt_get_alg", RTSUB_LIBJWT_SONAME)));
		return false;
	}
	return true;
}

/* check the signature with libjwt, using only KEY; sets *detail */
static RtsubAuthError
check_signature(const char *token, const JwtAlgorithm *alg,
				const unsigned char *key, int key_len, const char **detail)
{
	jwt_t	   *jwt = NULL;
	int			rc;
	jwt_alg_t	seen;

	/* never without a key: libjwt would then skip the signature check */
	if (key == NULL || key_len <= 0)
	{
		*detail = "no key";
		return RTSUB_AUTH_NO_KEY;
	}
	if (!libjwt_load())
	{
		*detail = "libjwt could not be loaded";
		return RTSUB_AUTH_NO_KEY;
	}
	rc = p_jwt_decode(&jwt, token, key, key_len);
	if (rc != 0 || jwt == NULL)
	{
		if (jwt != NULL)
			p_jwt_free(jwt);
		*detail = (rc == ENOMEM) ? "out of memory while verifying the signature"
			: "the signature does not verify";
		return RTSUB_AUTH_BAD_SIGNATURE;
	}
	seen = p_jwt_get_alg(jwt);
	p_jwt_free(jwt);
	if (seen != alg->libjwt_alg)
	{
		*detail = "the signature was not checked with the expected algorithm";
		return RTSUB_AUTH_BAD_ALGORITHM;
	}
	return RTSUB_AUTH_OK;
}

/* the body of rtsub_verify_jwt, allocating in a temporary context */
static RtsubAuthError
verify_jwt(const char *token, int64 now_unix, MemoryContext result_cxt,
		   RtsubToken *out, const char **detail)
{
	size_t		len;
	const char *dot1;
	const char *dot2;
	char	   *header;
	char	   *payload;
	int			header_len;
	int			payload_len;
	HeaderState hs;
	ClaimsState cs;
	JsonSemAction sem;
	const JwtAlgorithm *alg = NULL;
	RtsubAuthError err;
	double		now = (double) now_unix;
	double		leeway = (double) rtsub_jwt_leeway;
	int			i;

	/* shape: bounded, three base64url parts */
	if (token == NULL)
	{
		*detail = "no token";
		return RTSUB_AUTH_MALFORMED;
	}
	len = strnlen(token, RTSUB_JWT_MAX_TOKEN_LENGTH + 1);
	if (len > RTSUB_JWT_MAX_TOKEN_LENGTH)
	{
		*detail = "the token is longer than 16384 bytes";
		return RTSUB_AUTH_MALFORMED;
	}
	dot1 = strchr(token, '.');
	dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	if (dot1 == NULL || dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
	{
		*detail = "a token has three parts separated by dots";
		return RTSUB_AUTH_MALFORMED;
	}

	if (!is_base64url(dot2 + 1, token + len - (dot2 + 1)))
	{
		*detail = "the signature is not base64url-encoded";
		return RTSUB_AUTH_MALFORMED;
	}

	/* header */
	header = decode_part(token, dot1 - token, &header_len);
	if (header == NULL || !json_text_acceptable(header, header_len))
	{
		*detail = "the header is not base64url-encoded JSON";
		return RTSUB_AUTH_MALFORMED;
	}
	memset(&hs, 0, sizeof(hs));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &hs;
	sem.object_start = header_object_start;
	sem.object_end = header_end;
	sem.array_start = header_array_start;
	sem.array_end = header_end;
	sem.object_field_start = header_field_start;
	sem.scalar = header_scalar;
	if (!parse_json_text(header, header_len, &sem) || !hs.is_object)
	{
		*detail = "the header is not a JSON object";
		return RTSUB_AUTH_MALFORMED;
	}
	if (hs.error != NULL)
	{
		*detail = hs.error;
		return RTSUB_AUTH_MALFORMED;
	}
	if (hs.alg == NULL)
	{
		*detail = "the header has no \"alg\"";
		return RTSUB_AUTH_MALFORMED;
	}
	if (hs.has_crit)
	{
		*detail = "critical header parameters (\"crit\") are not supported";
		return RTSUB_AUTH_MALFORMED;
	}
	if (hs.typ != NULL && pg_strcasecmp(hs.typ, "JWT") != 0)
	{
		*detail = "the token type (\"typ\") is not JWT";
		return RTSUB_AUTH_MALFORMED;
	}

	/* algorithm: pinned to the configured list */
	if (pg_strcasecmp(hs.alg, "none") == 0)
	{
		*detail = "unsigned tokens (alg \"none\") are never accepted";
		return RTSUB_AUTH_BAD_ALGORITHM;
	}
	for (i = 0; i < lengthof(jwt_algorithms); i++)
	{
		if (strcmp(hs.alg, jwt_algorithms[i].name) == 0)
		{
			alg = &jwt_algorithms[i];
			break;
		}
	}
	if (alg == NULL || (alg->bit & rtsub_jwt_allowed_algorithms) == 0)
	{
		MemoryContext old = MemoryContextSwitchTo(result_cxt);

		*detail = psprintf("algorithm \"%.20s\" is not accepted (rtsub.jwt_algorithms)",
						   hs.alg);
		MemoryContextSwitchTo(old);
		return RTSUB_AUTH_BAD_ALGORITHM;
	}

	/* key: chosen by the algorithm's family */
	if (alg->pk_type == PK_NONE ? hs_key == NULL : pk_type != alg->pk_type)
	{
		MemoryContext old = MemoryContextSwitchTo(result_cxt);

		*detail = psprintf("no key is configured for algorithm %s (%s)", alg->name,
						   alg->pk_type == PK_NONE ? "rtsub.jwt_secret"
						   : "rtsub.jwt_public_key_file");
		MemoryContextSwitchTo(old);
		return RTSUB_AUTH_NO_KEY;
	}

	/* payload: must be JSON before the signature is checked */
	payload = decode_part(dot1 + 1, dot2 - dot1 - 1, &payload_len);
	if (payload == NULL || !json_text_acceptable(payload, payload_len))
	{
		*detail = "the payload is not base64url-encoded JSON";
		return RTSUB_AUTH_MALFORMED;
	}
	memset(&cs, 0, sizeof(cs));
	cs.role_claim = rtsub_jwt_role_claim ? rtsub_jwt_role_claim : "role";
	cs.audience = (rtsub_jwt_audience && rtsub_jwt_audience[0]) ? rtsub_jwt_audience : NULL;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &cs;
	sem.object_start = claims_object_start;
	sem.object_end = claims_end;
	sem.array_start = claims_array_start;
	sem.array_end = claims_end;
	sem.object_field_start = claims_field_start;
	sem.object_field_end = claims_field_end;
	sem.scalar = claims_scalar;
	if (!parse_json_text(payload, payload_len, &sem) || !cs.is_object)
	{
		*detail = "the payload is not a JSON object";
		return RTSUB_AUTH_MALFORMED;
	}

	/* signature, with the key of the algorithm's family only */
	if (alg->pk_type == PK_NONE)
		err = check_signature(token, alg, hs_key, hs_key_len, detail);
	else
		err = check_signature(token, alg, (const unsigned char *) pk_pem,
							  pk_pem_len, detail);
	if (err != RTSUB_AUTH_OK)
		return err;

	/* claims */
	if (cs.error != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(result_cxt);

		*detail = pstrdup(cs.error);
		MemoryContextSwitchTo(old);
		return RTSUB_AUTH_MALFORMED;
	}
	if (!(cs.seen & CLAIM_EXP))
	{
		*detail = "the token has no \"exp\" claim";
		return RTSUB_AUTH_MISSING_EXP;
	}
	if (now >= cs.exp + leeway)
	{
		*detail = "the \"exp\" claim is in the past";
		return RTSUB_AUTH_EXPIRED;
	}
	if ((cs.seen & CLAIM_NBF) && cs.nbf > now + leeway)
	{
		*detail = "the \"nbf\" claim is in the future";
		return RTSUB_AUTH_NOT_YET_VALID;
	}
	if ((cs.seen & CLAIM_IAT) && cs.iat > now + leeway)
	{
		*detail = "the \"iat\" claim is in the future";
		return RTSUB_AUTH_ISSUED_IN_FUTURE;
	}
	if (cs.audience != NULL && !cs.aud_match)
	{
		*detail = (cs.seen & CLAIM_AUD) ? "the \"aud\" claim does not contain rtsub.jwt_audience"
			: "the token has no \"aud\" claim";
		return RTSUB_AUTH_BAD_AUDIENCE;
	}
	if (rtsub_jwt_issuer != NULL && rtsub_jwt_issuer[0] != '\0' &&
		(cs.iss == NULL || strcmp(cs.iss, rtsub_jwt_issuer) != 0))
	{
		*detail = cs.iss ? "the \"iss\" claim differs from rtsub.jwt_issuer"
			: "the token has no \"iss\" claim";
		return RTSUB_AUTH_BAD_ISSUER;
	}
	if (cs.role == NULL || cs.role[0] == '\0' || cs.role_not_string)
	{
		MemoryContext old = MemoryContextSwitchTo(result_cxt);

		*detail = psprintf("the \"%s\" claim (rtsub.jwt_role_claim) is missing or not a non-empty string",
						   cs.role_claim);
		MemoryContextSwitchTo(old);
		return RTSUB_AUTH_NO_ROLE;
	}

	/* all good: copy the results out */
	if (out != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(result_cxt);

		out->claims_json = pnstrdup(payload, payload_len);
		out->role = pstrdup(cs.role);
		out->sub = cs.sub ? pstrdup(cs.sub) : NULL;
		if (cs.exp >= (double) PG_INT64_MAX)
			out->exp = PG_INT64_MAX;
		else if (cs.exp <= (double) PG_INT64_MIN)
			out->exp = PG_INT64_MIN;
		else
			out->exp = (int64) floor(cs.exp);
		MemoryContextSwitchTo(old);
	}
	*detail = NULL;
	return RTSUB_AUTH_OK;
}

/* verify a token; see auth_jwt.h */
RtsubAuthError
rtsub_verify_jwt(const char *token, int64 now_unix, RtsubToken *out,
				 const char **detail)
{
	const char *dummy;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext tmp;
	RtsubAuthError err;

	if (detail == NULL)
		detail = &dummy;
	*detail = NULL;
	if (out != NULL)
		memset(out, 0, sizeof(*out));
	if (!keys_loaded)
		load_keys(false);

	tmp = AllocSetContextCreate(caller, "rtsub jwt verification",
								ALLOCSET_SMALL_SIZES);
	MemoryContextSwitchTo(tmp);
	err = verify_jwt(token, now_unix, caller, out, detail);
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(tmp);
	return err;
}

PG_FUNCTION_INFO_V1(rtsub_verify_token);

/*
 * rtsub.verify_token(token text) RETURNS jsonb: the claims of a valid token,
 * with the keys and checks of this session's rtsub.jwt_* settings.
 */
Datum
rtsub_verify_token(PG_FUNCTION_ARGS)
{
	char	   *token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	RtsubToken tok;
	const char *detail;
	RtsubAuthError err;
	char	   *claims;

	/* the session's settings may have changed since the last call */
	load_keys(false);
	err = rtsub_verify_jwt(token, (int64) time(NULL), &tok, &detail);
	if (err != RTSUB_AUTH_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("invalid token: %s", rtsub_auth_error_message(err)),
				 errdetail("Code %s: %s.", rtsub_auth_error_code(err),
						   detail ? detail : rtsub_auth_error_message(err))));

	claims = pg_any_to_server(tok.claims_json, strlen(tok.claims_json), PG_UTF8);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(claims)));
}
