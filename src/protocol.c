/*-------------------------------------------------------------------------
 *
 * protocol.c
 *	  The client protocol's messages (docs/protocol.md): parsing what
 *	  clients send and building what the server sends (all but change,
 *	  changes and message), plus SQL-callable test access to both.
 *
 * Client input is untrusted.  A message is first checked without
 * allocating anything (size, NUL bytes and UTF-8 for JSON; the framing of
 * every MessagePack item; nesting depth for both), then parsed by
 * PostgreSQL's JSON parser or msgpack-c into one small value tree, which a
 * single format-blind pass turns into an RtsubClientMsg.  Parsing never
 * raises an error for bad input: it returns a protocol error code.
 *
 * Server messages are written through the RtsubWriter, so the JSON and
 * MessagePack forms come from the same code.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include <msgpack.h>

#include "common/jsonapi.h"
#include "common/shortest_dec.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/tuplestore.h"

#include "protocol.h"

PG_FUNCTION_INFO_V1(rtsub_parse_client_message_sql);
PG_FUNCTION_INFO_V1(rtsub_test_server_messages);

/* ----------------------------------------------------------------------
 * The value tree both formats are parsed into
 * ----------------------------------------------------------------------
 */
typedef enum PKind
{
	PK_NULL,
	PK_BOOL,
	PK_INT,						/* int64 (MessagePack) */
	PK_UINT,					/* uint64 above INT64_MAX (MessagePack) */
	PK_FLOAT,					/* float 32/64 (MessagePack) */
	PK_NUMBER,					/* number text (JSON), syntax checked */
	PK_STRING,
	PK_ARRAY,
	PK_OBJECT,
	PK_BIN,						/* MessagePack bin: never accepted */
	PK_EXT						/* MessagePack ext: never accepted */
} PKind;

typedef struct PValue PValue;

typedef struct PMember
{
	const char *key;			/* NULL in arrays, and for non-str map keys */
	int			keylen;
	PValue	   *value;
} PMember;

struct PValue
{
	PKind		kind;
	bool		is_float4;		/* PK_FLOAT: was a float 32 */
	bool		bad_keys;		/* PK_OBJECT: a map key was not a str */
	bool		b;
	int64		i;
	uint64		u;
	double		f;
	const char *s;				/* PK_STRING, PK_NUMBER: NUL-terminated */
	int			len;
	PMember    *items;			/* PK_ARRAY, PK_OBJECT */
	int			n;
	int			cap;
};

/* a new value of a kind */
static PValue *
pv_new(PKind kind)
{
	PValue	   *v = palloc0(sizeof(PValue));

	v->kind = kind;
	return v;
}

/* append an item (key NULL) or member to an array or object */
static void
pv_append(PValue *c, const char *key, int keylen, PValue *v)
{
	if (c->n == c->cap)
	{
		c->cap = c->cap ? c->cap * 2 : 8;
		if (c->items)
			c->items = repalloc(c->items, sizeof(PMember) * c->cap);
		else
			c->items = palloc(sizeof(PMember) * c->cap);
	}
	c->items[c->n].key = key;
	c->items[c->n].keylen = keylen;
	c->items[c->n].value = v;
	c->n++;
}

/* order members by key bytes (UTF-8 code point order), shorter first on ties */
static int
member_cmp(const void *a, const void *b)
{
	const PMember *ma = a;
	const PMember *mb = b;
	int			r = memcmp(ma->key, mb->key, Min(ma->keylen, mb->keylen));

	if (r != 0)
		return r;
	return (ma->keylen > mb->keylen) - (ma->keylen < mb->keylen);
}

/*
 * sort an object's members by key and return a key that occurs twice, or
 * NULL; the object must have only string keys
 */
static const PMember *
pv_sort_find_duplicate(PValue *obj)
{
	int			k;

	if (obj->n > 1)
		qsort(obj->items, obj->n, sizeof(PMember), member_cmp);
	for (k = 1; k < obj->n; k++)
		if (member_cmp(&obj->items[k - 1], &obj->items[k]) == 0)
			return &obj->items[k];
	return NULL;
}

/* a key, clipped to 64 bytes on a character boundary, for a detail */
static char *
detail_key(const char *key, int keylen)
{
	int			n = keylen > 64 ? pg_encoding_mbcliplen(PG_UTF8, key, keylen, 64) : keylen;

	return psprintf("%.*s%s", n, key, n < keylen ? "..." : "");
}

/* ----------------------------------------------------------------------
 * JSON
 * ----------------------------------------------------------------------
 */

/*
 * check that brackets nest at most RTSUB_PROTO_MAX_DEPTH deep, tracking
 * strings the way the JSON lexer does, so the recursive-descent parser
 * never goes deeper (the input is valid UTF-8: no multibyte character
 * contains '"' or '\\')
 */
static bool
json_depth_ok(const char *s, size_t len)
{
	int			depth = 0;
	bool		instr = false;
	size_t		i;

	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (instr)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				instr = false;
		}
		else if (c == '"')
			instr = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > RTSUB_PROTO_MAX_DEPTH)
				return false;
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return true;
}

/* state of the JSON semantic actions that build the value tree */
typedef struct JsonBuild
{
	PValue	   *root;
	PValue	   *stack[RTSUB_PROTO_MAX_DEPTH];
	int			depth;			/* open containers */
	bool		overflow;		/* nesting beyond the stack (cannot happen
								 * after json_depth_ok) */
	char	   *key;			/* the current object member's key */
} JsonBuild;

/* attach a new value to the open container, or make it the root */
static void
jb_attach(JsonBuild *jb, PValue *v)
{
	PValue	   *c;

	if (jb->depth == 0)
	{
		jb->root = v;
		return;
	}
	if (jb->depth > RTSUB_PROTO_MAX_DEPTH)
	{
		jb->overflow = true;
		return;
	}
	c = jb->stack[jb->depth - 1];
	if (c->kind == PK_OBJECT)
		pv_append(c, jb->key, jb->key ? strlen(jb->key) : 0, v);
	else
		pv_append(c, NULL, 0, v);
}

/* open a container */
static void
jb_open(JsonBuild *jb, PKind kind)
{
	PValue	   *v = pv_new(kind);

	jb_attach(jb, v);
	if (jb->depth < RTSUB_PROTO_MAX_DEPTH)
		jb->stack[jb->depth] = v;
	else
		jb->overflow = true;
	jb->depth++;
}

/* an object starts */
static void
jb_object_start(void *state)
{
	jb_open((JsonBuild *) state, PK_OBJECT);
}

/* an array starts */
static void
jb_array_start(void *state)
{
	jb_open((JsonBuild *) state, PK_ARRAY);
}

/* an object or array ends */
static void
jb_end(void *state)
{
	((JsonBuild *) state)->depth--;
}

/* an object member starts: remember its (de-escaped) key */
static void
jb_field_start(void *state, char *fname, bool isnull)
{
	((JsonBuild *) state)->key = fname;
}

/* a scalar */
static void
jb_scalar(void *state, char *token, JsonTokenType type)
{
	PValue	   *v;

	switch (type)
	{
		case JSON_TOKEN_STRING:
			v = pv_new(PK_STRING);
			v->s = token;
			v->len = strlen(token);
			break;
		case JSON_TOKEN_NUMBER:
			v = pv_new(PK_NUMBER);
			v->s = token;
			v->len = strlen(token);
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			v = pv_new(PK_BOOL);
			v->b = (type == JSON_TOKEN_TRUE);
			break;
		default:
			v = pv_new(PK_NULL);
			break;
	}
	jb_attach((JsonBuild *) state, v);
}

/* parse a JSON message into a value tree; returns an error code or NULL */
static const char *
parse_json(const char *data, size_t len, PValue **root, char **detail)
{
	char	   *buf;
	JsonBuild	jb;
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType res;

	if (memchr(data, '\0', len) != NULL)
	{
		*detail = pstrdup("the message contains a NUL byte");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (!pg_verify_mbstr(PG_UTF8, data, (int) len, true))
	{
		*detail = pstrdup("the message is not valid UTF-8");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (!json_depth_ok(data, len))
	{
		*detail = psprintf("the message nests deeper than %d levels",
						   RTSUB_PROTO_MAX_DEPTH);
		return RTSUB_ERR_BAD_MESSAGE;
	}

	buf = palloc(len + 1);
	memcpy(buf, data, len);
	buf[len] = '\0';

	memset(&jb, 0, sizeof(jb));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &jb;
	sem.object_start = jb_object_start;
	sem.object_end = jb_end;
	sem.array_start = jb_array_start;
	sem.array_end = jb_end;
	sem.object_field_start = jb_field_start;
	sem.scalar = jb_scalar;

	lex = makeJsonLexContextCstringLen(buf, (int) len, PG_UTF8, true);
	res = pg_parse_json(lex, &sem);
	if (res != JSON_SUCCESS)
	{
		*detail = psprintf("invalid JSON: %s", json_errdetail(res, lex));
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (jb.overflow || jb.root == NULL)
	{
		*detail = psprintf("the message nests deeper than %d levels",
						   RTSUB_PROTO_MAX_DEPTH);
		return RTSUB_ERR_BAD_MESSAGE;
	}
	*root = jb.root;
	return NULL;
}

/* ----------------------------------------------------------------------
 * MessagePack
 * ----------------------------------------------------------------------
 */

/* read a big-endian unsigned integer of n (1, 2 or 4) bytes */
static uint64
mp_be(const unsigned char *p, int n)
{
	uint64		v = 0;
	int			k;

	for (k = 0; k < n; k++)
		v = (v << 8) | p[k];
	return v;
}

/*
 * check the framing of a MessagePack buffer without allocating: it must
 * hold exactly one object, every item must fit in the buffer, containers
 * may not claim more items than bytes remain (which bounds what msgpack-c
 * allocates for them) and may nest at most RTSUB_PROTO_MAX_DEPTH deep
 */
static const char *
mp_framing_ok(const unsigned char *p, size_t len)
{
	uint64		remaining[RTSUB_PROTO_MAX_DEPTH + 1];
	int			depth = 0;
	size_t		pos = 0;

	remaining[0] = 1;			/* the one top-level object */
	for (;;)
	{
		unsigned char b;
		size_t		need;		/* bytes of header + fixed data after b */
		uint64		body = 0;	/* variable-length data after the header */
		uint64		items = 0;	/* container entries */
		bool		container = false;

		if (remaining[depth] == 0)
		{
			if (depth == 0)
				break;
			depth--;
			continue;
		}
		if (pos >= len)
			return "the MessagePack data is truncated";
		remaining[depth]--;
		b = p[pos];
		need = 0;
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
			need = 0;			/* fixint, nil, false, true */
		else if (b <= 0x8f)
		{
			container = true;
			items = 2 * (uint64) (b & 0x0f);
		}
		else if (b <= 0x9f)
		{
			container = true;
			items = b & 0x0f;
		}
		else if (b <= 0xbf)
			body = b & 0x1f;	/* fixstr */
		else
		{
			switch (b)
			{
				case 0xc4:		/* bin 8/16/32, str 8/16/32 */
				case 0xd9:
					need = 1;
					break;
				case 0xc5:
				case 0xda:
					need = 2;
					break;
				case 0xc6:
				case 0xdb:
					need = 4;
					break;
				case 0xc7:		/* ext 8/16/32: length, type */
					need = 2;
					break;
				case 0xc8:
					need = 3;
					break;
				case 0xc9:
					need = 5;
					break;
				case 0xca:		/* float 32/64 */
					need = 4;
					break;
				case 0xcb:
					need = 8;
					break;
				case 0xcc:		/* uint, int 8/16/32/64 */
				case 0xd0:
					need = 1;
					break;
				case 0xcd:
				case 0xd1:
					need = 2;
					break;
				case 0xce:
				case 0xd2:
					need = 4;
					break;
				case 0xcf:
				case 0xd3:
					need = 8;
					break;
				case 0xd4:		/* fixext 1/2/4/8/16: type + data */
					need = 2;
					break;
				case 0xd5:
					need = 3;
					break;
				case 0xd6:
					need = 5;
					break;
				case 0xd7:
					need = 9;
					break;
				case 0xd8:
					need = 17;
					break;
				case 0xdc:		/* array 16/32, map 16/32 */
				case 0xde:
					need = 2;
					container = true;
					break;
				case 0xdd:
				case 0xdf:
					need = 4;
					container = true;
					break;
				default:		/* 0xc1: never used */
					return "invalid MessagePack type byte";
			}
		}
		if (len - pos - 1 < need)
			return "the MessagePack data is truncated";
		/* the length fields of variable-length items and big containers */
		switch (b)
		{
			case 0xc4:
			case 0xd9:
			case 0xc5:
			case 0xda:
			case 0xc6:
			case 0xdb:
				body = mp_be(p + pos + 1, (int) need);
				break;
			case 0xc7:
			case 0xc8:
			case 0xc9:
				body = mp_be(p + pos + 1, (int) need - 1);
				break;
			case 0xdc:
			case 0xdd:
				items = mp_be(p + pos + 1, (int) need);
				break;
			case 0xde:
			case 0xdf:
				items = 2 * mp_be(p + pos + 1, (int) need);
				break;
			default:
				break;
		}
		pos += 1 + need;
		if (body > len - pos)
			return "the MessagePack data is truncated";
		pos += body;
		if (container)
		{
			if (depth + 1 > RTSUB_PROTO_MAX_DEPTH)
				return psprintf("the message nests deeper than %d levels",
								RTSUB_PROTO_MAX_DEPTH);
			if (items > len - pos)
				return "the MessagePack data is truncated";
			depth++;
			remaining[depth] = items;
		}
	}
	if (pos != len)
		return "trailing bytes after the MessagePack object";
	return NULL;
}

/* copy a MessagePack str, which must be valid UTF-8 without NUL bytes */
static bool
mp_copy_str(const char *s, uint32 size, const char **out, int *outlen)
{
	char	   *copy;

	if (!pg_verify_mbstr(PG_UTF8, s, (int) size, true))
		return false;
	copy = palloc(size + 1);
	memcpy(copy, s, size);
	copy[size] = '\0';
	*out = copy;
	*outlen = (int) size;
	return true;
}

/*
 * convert an unpacked MessagePack object to a value tree (nesting is
 * bounded by mp_framing_ok); returns false for a str that is not UTF-8
 */
static bool
mp_convert(const msgpack_object *o, PValue **out)
{
	PValue	   *v;
	uint32		k;

	switch (o->type)
	{
		case MSGPACK_OBJECT_NIL:
			v = pv_new(PK_NULL);
			break;
		case MSGPACK_OBJECT_BOOLEAN:
			v = pv_new(PK_BOOL);
			v->b = o->via.boolean;
			break;
		case MSGPACK_OBJECT_POSITIVE_INTEGER:
			if (o->via.u64 <= (uint64) PG_INT64_MAX)
			{
				v = pv_new(PK_INT);
				v->i = (int64) o->via.u64;
			}
			else
			{
				v = pv_new(PK_UINT);
				v->u = o->via.u64;
			}
			break;
		case MSGPACK_OBJECT_NEGATIVE_INTEGER:
			v = pv_new(PK_INT);
			v->i = o->via.i64;
			break;
		case MSGPACK_OBJECT_FLOAT32:
		case MSGPACK_OBJECT_FLOAT64:
			v = pv_new(PK_FLOAT);
			v->f = o->via.f64;
			v->is_float4 = (o->type == MSGPACK_OBJECT_FLOAT32);
			break;
		case MSGPACK_OBJECT_STR:
			v = pv_new(PK_STRING);
			if (!mp_copy_str(o->via.str.ptr, o->via.str.size, &v->s, &v->len))
				return false;
			break;
		case MSGPACK_OBJECT_ARRAY:
			v = pv_new(PK_ARRAY);
			for (k = 0; k < o->via.array.size; k++)
			{
				PValue	   *item;

				if (!mp_convert(&o->via.array.ptr[k], &item))
					return false;
				pv_append(v, NULL, 0, item);
			}
			break;
		case MSGPACK_OBJECT_MAP:
			v = pv_new(PK_OBJECT);
			for (k = 0; k < o->via.map.size; k++)
			{
				const msgpack_object_kv *kv = &o->via.map.ptr[k];
				const char *key = NULL;
				int			keylen = 0;
				PValue	   *item;

				if (kv->key.type == MSGPACK_OBJECT_STR)
				{
					if (!mp_copy_str(kv->key.via.str.ptr, kv->key.via.str.size,
									 &key, &keylen))
						return false;
				}
				else
				{
					/* rejected later, if used; its strs are checked now */
					v->bad_keys = true;
					if (!mp_convert(&kv->key, &item))
						return false;
				}
				if (!mp_convert(&kv->val, &item))
					return false;
				pv_append(v, key, keylen, item);
			}
			break;
		case MSGPACK_OBJECT_BIN:
			v = pv_new(PK_BIN);
			break;
		default:
			v = pv_new(PK_EXT);
			break;
	}
	*out = v;
	return true;
}

/* parse a MessagePack message into a value tree; returns an error code or NULL */
static const char *
parse_msgpack(const char *data, size_t len, PValue **root, char **detail)
{
	const char *problem;
	msgpack_unpacked up;
	volatile msgpack_unpack_return ret = MSGPACK_UNPACK_PARSE_ERROR;
	size_t		off = 0;
	volatile bool converted = false;

	problem = mp_framing_ok((const unsigned char *) data, len);
	if (problem != NULL)
	{
		*detail = pstrdup(problem);
		return RTSUB_ERR_BAD_MESSAGE;
	}

	/* msgpack-c mallocs; free it whatever happens, errors included */
	msgpack_unpacked_init(&up);
	PG_TRY();
	{
		ret = msgpack_unpack_next(&up, data, len, &off);
		if (ret == MSGPACK_UNPACK_SUCCESS && off == len)
			converted = mp_convert(&up.data, root);
	}
	PG_FINALLY();
	{
		msgpack_unpacked_destroy(&up);
	}
	PG_END_TRY();

	if (ret != MSGPACK_UNPACK_SUCCESS || off != len)
	{
		*detail = psprintf("invalid MessagePack (%s)",
						   ret == MSGPACK_UNPACK_NOMEM_ERROR ? "out of memory" :
						   ret == MSGPACK_UNPACK_CONTINUE ? "truncated" :
						   ret == MSGPACK_UNPACK_SUCCESS ? "trailing bytes" :
						   "parse error");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (!converted)
	{
		*detail = pstrdup("a MessagePack str is not valid UTF-8 or contains a NUL byte");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	return NULL;
}

/* ----------------------------------------------------------------------
 * From the value tree to a client message
 * ----------------------------------------------------------------------
 */

/* a member of an object by key, or NULL */
static PValue *
pv_get(PValue *obj, const char *name)
{
	int			namelen = strlen(name);
	int			k;

	for (k = 0; k < obj->n; k++)
		if (obj->items[k].keylen == namelen &&
			memcmp(obj->items[k].key, name, namelen) == 0)
			return obj->items[k].value;
	return NULL;
}

/* an optional member: absent or null give NULL */
static PValue *
pv_get_opt(PValue *obj, const char *name)
{
	PValue	   *v = pv_get(obj, name);

	return (v == NULL || v->kind == PK_NULL) ? NULL : v;
}

/* the value of an integral number, if it is one within [lo, hi] */
static bool
pv_int_in_range(PValue *v, int lo, int hi, int *out)
{
	double		d;

	switch (v->kind)
	{
		case PK_INT:
			if (v->i < lo || v->i > hi)
				return false;
			*out = (int) v->i;
			return true;
		case PK_FLOAT:
			d = v->f;
			break;
		case PK_NUMBER:
			{
				char	   *end;

				errno = 0;
				d = strtod(v->s, &end);
				if (*end != '\0')
					return false;
				break;
			}
		default:
			return false;
	}
	if (!(d >= lo && d <= hi) || d != floor(d))
		return false;
	*out = (int) d;
	return true;
}

/* an optional integer field with a range and default */
static const char *
get_int(PValue *obj, const char *name, int lo, int hi, int dflt, int *out,
		char **detail)
{
	PValue	   *v = pv_get_opt(obj, name);

	*out = dflt;
	if (v == NULL)
		return NULL;
	if (!pv_int_in_range(v, lo, hi, out))
	{
		*out = dflt;
		*detail = psprintf("field \"%s\" must be an integer from %d to %d",
						   name, lo, hi);
		return RTSUB_ERR_BAD_FIELD;
	}
	return NULL;
}

/* an optional boolean field, default false */
static const char *
get_bool(PValue *obj, const char *name, bool *out, char **detail)
{
	PValue	   *v = pv_get_opt(obj, name);

	*out = false;
	if (v == NULL)
		return NULL;
	if (v->kind != PK_BOOL)
	{
		*detail = psprintf("field \"%s\" must be a boolean", name);
		return RTSUB_ERR_BAD_FIELD;
	}
	*out = v->b;
	return NULL;
}

/* is every byte printable ASCII (space to tilde)? */
static bool
printable_ascii(const char *s, int len)
{
	int			k;

	for (k = 0; k < len; k++)
		if (s[k] < 0x20 || s[k] > 0x7e)
			return false;
	return true;
}

/*
 * a string field of 1 to maxlen bytes (printable ASCII if ascii), under its
 * display name; *out stays NULL when it is optional and absent
 */
static const char *
get_str(PValue *obj, const char *key, const char *name, bool required,
		int maxlen, bool ascii, char **out, char **detail)
{
	PValue	   *v = pv_get_opt(obj, key);

	*out = NULL;
	if (v == NULL)
	{
		if (!required)
			return NULL;
		*detail = psprintf("missing field \"%s\"", name);
		return RTSUB_ERR_BAD_FIELD;
	}
	if (v->kind != PK_STRING)
	{
		*detail = psprintf("field \"%s\" must be a string", name);
		return RTSUB_ERR_BAD_FIELD;
	}
	if (v->len < 1 || v->len > maxlen)
	{
		*detail = psprintf("field \"%s\" must be 1 to %d bytes long", name, maxlen);
		return RTSUB_ERR_BAD_FIELD;
	}
	if (ascii && !printable_ascii(v->s, v->len))
	{
		*detail = psprintf("field \"%s\" must be printable ASCII", name);
		return RTSUB_ERR_BAD_FIELD;
	}
	*out = (char *) v->s;
	return NULL;
}

/* append a float as a JSON number; false for NaN and infinities */
static bool
append_json_float(StringInfo buf, double f, bool is_float4)
{
	char		num[DOUBLE_SHORTEST_DECIMAL_LEN + 1];
	int			n;

	if (!isfinite(f))
		return false;
	if (is_float4)
		n = float_to_shortest_decimal_bufn((float) f, num);
	else
		n = double_to_shortest_decimal_bufn(f, num);
	appendBinaryStringInfo(buf, num, n);
	return true;
}

/*
 * append a value as canonical JSON: compact, object keys sorted bytewise
 * and unique, strings escaped by escape_json(), JSON numbers as written,
 * MessagePack numbers in decimal (floats in shortest round-trip form);
 * returns a problem description, or NULL
 */
static const char *
pv_write_json(StringInfo buf, PValue *v)
{
	const char *problem;
	const PMember *dup;
	int			k;

	switch (v->kind)
	{
		case PK_NULL:
			appendStringInfoString(buf, "null");
			break;
		case PK_BOOL:
			appendStringInfoString(buf, v->b ? "true" : "false");
			break;
		case PK_INT:
			appendStringInfo(buf, INT64_FORMAT, v->i);
			break;
		case PK_UINT:
			appendStringInfo(buf, UINT64_FORMAT, v->u);
			break;
		case PK_FLOAT:
			if (!append_json_float(buf, v->f, v->is_float4))
				return "NaN and infinities are not allowed";
			break;
		case PK_NUMBER:
			appendBinaryStringInfo(buf, v->s, v->len);
			break;
		case PK_STRING:
			escape_json(buf, v->s);
			break;
		case PK_ARRAY:
			appendStringInfoChar(buf, '[');
			for (k = 0; k < v->n; k++)
			{
				if (k > 0)
					appendStringInfoChar(buf, ',');
				if ((problem = pv_write_json(buf, v->items[k].value)) != NULL)
					return problem;
			}
			appendStringInfoChar(buf, ']');
			break;
		case PK_OBJECT:
			if (v->bad_keys)
				return "map keys must be strings";
			if ((dup = pv_sort_find_duplicate(v)) != NULL)
				return psprintf("duplicate key \"%s\"",
								detail_key(dup->key, dup->keylen));
			appendStringInfoChar(buf, '{');
			for (k = 0; k < v->n; k++)
			{
				if (k > 0)
					appendStringInfoChar(buf, ',');
				escape_json(buf, v->items[k].key);
				appendStringInfoChar(buf, ':');
				if ((problem = pv_write_json(buf, v->items[k].value)) != NULL)
					return problem;
			}
			appendStringInfoChar(buf, '}');
			break;
		case PK_BIN:
			return "bin values are not allowed";
		case PK_EXT:
			return "ext values are not allowed";
	}
	return NULL;
}

/* the fields of subscribe */
static const char *
interpret_subscribe(PValue *obj, RtsubClientMsg *msg, char **detail)
{
	const char *code;
	PValue	   *v;

	if ((code = get_str(obj, "id", "id", true, RTSUB_PROTO_MAX_ID, true,
						&msg->id, detail)) != NULL)
		return code;
	if ((code = get_str(obj, "subscription", "subscription", true,
						RTSUB_PROTO_MAX_SUBSCRIPTION, false,
						&msg->subscription, detail)) != NULL)
		return code;

	if ((v = pv_get_opt(obj, "params")) != NULL)
	{
		StringInfoData buf;
		const char *problem;

		if (v->kind != PK_OBJECT)
		{
			*detail = pstrdup("field \"params\" must be an object");
			return RTSUB_ERR_BAD_FIELD;
		}
		initStringInfo(&buf);
		if ((problem = pv_write_json(&buf, v)) != NULL)
		{
			*detail = psprintf("field \"params\": %s", problem);
			return RTSUB_ERR_BAD_FIELD;
		}
		msg->params_json = buf.data;
	}

	if ((code = get_bool(obj, "snapshot", &msg->snapshot, detail)) != NULL ||
		(code = get_int(obj, "chunkRows", 1, 100000, 1000,
						&msg->chunk_rows, detail)) != NULL ||
		(code = get_int(obj, "chunkBytes", 1024, 16 * 1024 * 1024, 1024 * 1024,
						&msg->chunk_bytes, detail)) != NULL)
		return code;

	if ((v = pv_get_opt(obj, "resume")) != NULL)
	{
		if (v->kind != PK_OBJECT || v->bad_keys)
		{
			*detail = pstrdup("field \"resume\" must be an object with \"epoch\" and \"after\"");
			return RTSUB_ERR_BAD_FIELD;
		}
		if ((code = get_str(v, "epoch", "resume.epoch", true,
							RTSUB_PROTO_MAX_EVENT, true,
							&msg->resume_epoch, detail)) != NULL)
			return code;
		if ((code = get_str(v, "after", "resume.after", true,
							RTSUB_PROTO_MAX_EVENT, true,
							&msg->resume_after, detail)) != NULL)
			return code;
	}

	if ((code = get_int(obj, "batchSize", 1, 1000, 1,
						&msg->batch_size, detail)) != NULL ||
		(code = get_int(obj, "throttleMs", 0, 10000, 0,
						&msg->throttle_ms, detail)) != NULL ||
		(code = get_bool(obj, "includeMetadata",
						 &msg->include_metadata, detail)) != NULL ||
		(code = get_int(obj, "priority", 0, 9, 5,
						&msg->priority, detail)) != NULL)
		return code;
	return NULL;
}

/* the fields of ping: an optional scalar nonce, kept as JSON text */
static const char *
interpret_ping(PValue *obj, RtsubClientMsg *msg, char **detail)
{
	PValue	   *v = pv_get(obj, "nonce");
	StringInfoData buf;

	if (v == NULL)
		return NULL;
	if (v->kind == PK_ARRAY || v->kind == PK_OBJECT ||
		v->kind == PK_BIN || v->kind == PK_EXT ||
		(v->kind == PK_FLOAT && !isfinite(v->f)))
	{
		*detail = pstrdup("field \"nonce\" must be a string, a finite number, a boolean or null");
		return RTSUB_ERR_BAD_FIELD;
	}
	initStringInfo(&buf);
	(void) pv_write_json(&buf, v);
	msg->nonce = buf.data;
	return NULL;
}

/* interpret the value tree of a message */
static const char *
interpret(PValue *root, RtsubClientMsg *msg, char **detail)
{
	const PMember *dup;
	PValue	   *t;

	if (root->kind != PK_OBJECT)
	{
		*detail = pstrdup("the message is not an object");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (root->bad_keys)
	{
		*detail = pstrdup("the message's map keys must be strings");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if ((dup = pv_sort_find_duplicate(root)) != NULL)
	{
		*detail = psprintf("duplicate key \"%s\"",
						   detail_key(dup->key, dup->keylen));
		return RTSUB_ERR_BAD_MESSAGE;
	}

	t = pv_get(root, "type");
	if (t == NULL)
	{
		*detail = pstrdup("missing field \"type\"");
		return RTSUB_ERR_BAD_FIELD;
	}
	if (t->kind != PK_STRING)
	{
		*detail = pstrdup("field \"type\" must be a string");
		return RTSUB_ERR_BAD_FIELD;
	}

	if (strcmp(t->s, "subscribe") == 0)
	{
		msg->type = RTSUB_MSG_SUBSCRIBE;
		return interpret_subscribe(root, msg, detail);
	}
	if (strcmp(t->s, "unsubscribe") == 0)
	{
		msg->type = RTSUB_MSG_UNSUBSCRIBE;
		return get_str(root, "id", "id", true, RTSUB_PROTO_MAX_ID, true,
					   &msg->id, detail);
	}
	if (strcmp(t->s, "ping") == 0)
	{
		msg->type = RTSUB_MSG_PING;
		return interpret_ping(root, msg, detail);
	}
	if (strcmp(t->s, "refresh") == 0 || strcmp(t->s, "auth") == 0)
	{
		msg->type = t->s[0] == 'r' ? RTSUB_MSG_REFRESH : RTSUB_MSG_AUTH;
		return get_str(root, "token", "token", true, RTSUB_PROTO_MAX_TOKEN,
					   false, &msg->token, detail);
	}
	*detail = psprintf("unknown message type \"%s\"", detail_key(t->s, t->len));
	return RTSUB_ERR_UNKNOWN_TYPE;
}

/*
 * Parse one client message (untrusted) in the given format into *msg,
 * allocating in CurrentMemoryContext.  Returns NULL on success, or an error
 * code (RTSUB_ERR_*) with *detail set to a palloc'd description; then
 * msg->id is the message's id if it was valid (for the error's ref).
 * Never raises an error for bad input (only for running out of memory).
 */
const char *
rtsub_parse_client_message(const char *data, size_t len, RtsubFormat format,
						   RtsubClientMsg *msg, char **detail)
{
	PValue	   *root = NULL;
	const char *code;

	memset(msg, 0, sizeof(*msg));
	msg->batch_size = 1;
	msg->chunk_rows = 1000;
	msg->chunk_bytes = 1024 * 1024;
	msg->throttle_ms = 0;
	msg->priority = 5;
	*detail = NULL;

	if (len == 0)
	{
		*detail = pstrdup("the message is empty");
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (len > RTSUB_PROTO_MAX_INPUT)
	{
		*detail = psprintf("the message is larger than %d bytes",
						   RTSUB_PROTO_MAX_INPUT);
		return RTSUB_ERR_BAD_MESSAGE;
	}
	if (format == RTSUB_FORMAT_MSGPACK)
		code = parse_msgpack(data, len, &root, detail);
	else
		code = parse_json(data, len, &root, detail);
	if (code == NULL)
		code = interpret(root, msg, detail);
	if (code != NULL && strlen(*detail) > RTSUB_PROTO_MAX_DETAIL)
	{
		/* JSON parser details quote the offending token, of any length */
		int			n = pg_encoding_mbcliplen(PG_UTF8, *detail, strlen(*detail),
											  RTSUB_PROTO_MAX_DETAIL);

		*detail = psprintf("%.*s...", n, *detail);
	}
	return code;
}

/* the protocol name of a client message type */
const char *
rtsub_msg_type_name(RtsubMsgType type)
{
	switch (type)
	{
		case RTSUB_MSG_SUBSCRIBE:
			return "subscribe";
		case RTSUB_MSG_UNSUBSCRIBE:
			return "unsubscribe";
		case RTSUB_MSG_PING:
			return "ping";
		case RTSUB_MSG_REFRESH:
			return "refresh";
		case RTSUB_MSG_AUTH:
			return "auth";
	}
	return "unknown";
}

/* ----------------------------------------------------------------------
 * Server messages
 * ----------------------------------------------------------------------
 */

/* write a key and a string value, or null for NULL */
static void
put_str(RtsubWriter *w, const char *key, const char *value)
{
	w->enc->key(w, key, strlen(key));
	if (value)
		w->enc->str(w, value, strlen(value));
	else
		w->enc->null(w);
}

/* write a key and an integer value */
static void
put_int(RtsubWriter *w, const char *key, int64 value)
{
	w->enc->key(w, key, strlen(key));
	w->enc->int64(w, value);
}

/* start a message of n pairs (type included) and write its type */
static void
msg_begin(RtsubWriter *w, StringInfo out, RtsubFormat f, const char *type, int n)
{
	rtsub_writer_init(w, out, f);
	w->enc->map_begin(w, n);
	put_str(w, "type", type);
}

/* the one scalar of a JSON text, as the parser reports it */
typedef struct ScalarToken
{
	char	   *token;
	JsonTokenType type;
} ScalarToken;

/* the scalar callback of json_scalar_write: remember the token */
static void
scalar_token(void *state, char *token, JsonTokenType type)
{
	ScalarToken *st = state;

	st->token = token;
	st->type = type;
}

/* write 0xcb/0xcf and a big-endian 64-bit value as a MessagePack fragment */
static void
mp_put64(RtsubWriter *w, unsigned char marker, uint64 bits)
{
	char		b[9];

	b[0] = (char) marker;
	bits = pg_hton64(bits);
	memcpy(b + 1, &bits, 8);
	w->enc->fragment(w, b, 9);
}

/*
 * write a scalar given as JSON text (a ping's nonce): verbatim in JSON, as
 * the native MessagePack scalar otherwise (integers as int, other numbers
 * as float 64)
 */
static void
json_scalar_write(RtsubWriter *w, RtsubFormat f, const char *json)
{
	char	   *copy;
	ScalarToken st = {NULL, JSON_TOKEN_INVALID};
	JsonSemAction sem;
	JsonLexContext *lex;

	if (f == RTSUB_FORMAT_JSON)
	{
		/* a fragment is raw text preceded by the separator owed */
		w->enc->fragment(w, json, strlen(json));
		return;
	}
	copy = pstrdup(json);
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.scalar = scalar_token;
	lex = makeJsonLexContextCstringLen(copy, strlen(copy), PG_UTF8, true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS || st.token == NULL)
	{
		w->enc->str(w, json, strlen(json));
		return;
	}
	switch (st.type)
	{
		case JSON_TOKEN_STRING:
			w->enc->str(w, st.token, strlen(st.token));
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			w->enc->boolean(w, st.type == JSON_TOKEN_TRUE);
			break;
		case JSON_TOKEN_NUMBER:
			{
				char	   *end;
				double		d;

				if (strpbrk(st.token, ".eE") == NULL)
				{
					long long	i;
					unsigned long long u;

					errno = 0;
					i = strtoll(st.token, &end, 10);
					if (errno == 0 && *end == '\0')
					{
						w->enc->int64(w, (int64) i);
						break;
					}
					errno = 0;
					u = strtoull(st.token, &end, 10);
					if (st.token[0] != '-' && errno == 0 && *end == '\0')
					{
						mp_put64(w, 0xcf, (uint64) u);
						break;
					}
				}
				d = strtod(st.token, NULL);
				{
					uint64		bits;

					memcpy(&bits, &d, 8);
					mp_put64(w, 0xcb, bits);
				}
				break;
			}
		default:
			w->enc->null(w);
			break;
	}
}

/* welcome: protocol, server, epoch, role, exp, heartbeatMs, limits */
void
rtsub_msg_welcome(StringInfo out, RtsubFormat f, const RtsubWelcome *wel)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "welcome", 8);
	put_int(&w, "protocol", 1);
	put_str(&w, "server", wel->server);
	put_str(&w, "epoch", wel->epoch);
	put_str(&w, "role", wel->role);
	w.enc->key(&w, "exp", 3);
	if (wel->exp >= 0)
		w.enc->int64(&w, wel->exp);
	else
		w.enc->null(&w);
	put_int(&w, "heartbeatMs", wel->heartbeat_ms);
	w.enc->key(&w, "limits", 6);
	w.enc->map_begin(&w, 4);
	put_int(&w, "maxSubscriptions", wel->max_subscriptions);
	put_int(&w, "maxMessageSize", wel->max_message_size);
	put_int(&w, "maxMessagesPerSecond", wel->max_messages_per_second);
	put_int(&w, "maxSendBuffer", wel->max_send_buffer);
	w.enc->map_end(&w);
	w.enc->map_end(&w);
}

/* subscribed: id, at (the event id from which the stream is live) */
void
rtsub_msg_subscribed(StringInfo out, RtsubFormat f, const char *id, const char *at,
					 const char *epoch, bool snapshot, bool resumed)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "subscribed", 6);
	put_str(&w, "id", id);
	put_str(&w, "at", at);
	put_str(&w, "epoch", epoch);
	w.enc->key(&w, "snapshot", 8);
	w.enc->boolean(&w, snapshot);
	w.enc->key(&w, "resumed", 7);
	w.enc->boolean(&w, resumed);
	w.enc->map_end(&w);
}

/* live: id, at, epoch */
void
rtsub_msg_live(StringInfo out, RtsubFormat f, const char *id, const char *at,
			   const char *epoch)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "live", 4);
	put_str(&w, "id", id);
	put_str(&w, "at", at);
	put_str(&w, "epoch", epoch);
	w.enc->map_end(&w);
}

/* unsubscribed: id */
void
rtsub_msg_unsubscribed(StringInfo out, RtsubFormat f, const char *id)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "unsubscribed", 2);
	put_str(&w, "id", id);
	w.enc->map_end(&w);
}

/* pong: the ping's nonce (JSON text from the parser), omitted when NULL */
void
rtsub_msg_pong(StringInfo out, RtsubFormat f, const char *nonce_json)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "pong", nonce_json ? 2 : 1);
	if (nonce_json)
	{
		w.enc->key(&w, "nonce", 5);
		json_scalar_write(&w, f, nonce_json);
	}
	w.enc->map_end(&w);
}

/* refreshed: exp (Unix seconds) */
void
rtsub_msg_refreshed(StringInfo out, RtsubFormat f, int64 exp)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "refreshed", 2);
	put_int(&w, "exp", exp);
	w.enc->map_end(&w);
}

/* error: code, message, and ref (the id it is about) unless NULL */
void
rtsub_msg_error(StringInfo out, RtsubFormat f, const char *code,
				const char *message, const char *ref)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "error", ref ? 4 : 3);
	put_str(&w, "code", code);
	put_str(&w, "message", message);
	if (ref)
		put_str(&w, "ref", ref);
	w.enc->map_end(&w);
}

/* heartbeat: at (the newest event id processed) */
void
rtsub_msg_heartbeat(StringInfo out, RtsubFormat f, const char *at)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "heartbeat", 2);
	put_str(&w, "at", at);
	w.enc->map_end(&w);
}

/* reset: id, reason */
void
rtsub_msg_reset(StringInfo out, RtsubFormat f, const char *id, const char *reason)
{
	RtsubWriter w;

	msg_begin(&w, out, f, "reset", 3);
	put_str(&w, "id", id);
	put_str(&w, "reason", reason);
	w.enc->map_end(&w);
}

/* ----------------------------------------------------------------------
 * SQL access for tests and diagnostics
 * ----------------------------------------------------------------------
 */

/* a format name as given to the SQL functions */
static RtsubFormat
format_arg(text *t)
{
	char	   *s = text_to_cstring(t);

	if (strcmp(s, "json") == 0)
		return RTSUB_FORMAT_JSON;
	if (strcmp(s, "msgpack") == 0)
		return RTSUB_FORMAT_MSGPACK;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown rtsub message format \"%s\"", s),
			 errhint("The formats are \"json\" and \"msgpack\".")));
	return RTSUB_FORMAT_JSON;	/* keep the compiler quiet */
}

/*
 * rtsub.parse_client_message(message bytea, format text) returns jsonb:
 * the parsed message's fields, or {"error", "detail"[, "id"]}
 */
Datum
rtsub_parse_client_message_sql(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	RtsubFormat format = format_arg(PG_GETARG_TEXT_PP(1));
	RtsubClientMsg msg;
	char	   *detail;
	const char *code;
	StringInfoData buf;
	RtsubWriter w;
	char	   *json;

	code = rtsub_parse_client_message(VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b),
									  format, &msg, &detail);
	initStringInfo(&buf);
	rtsub_writer_init(&w, &buf, RTSUB_FORMAT_JSON);
	w.enc->map_begin(&w, 0);
	if (code != NULL)
	{
		put_str(&w, "error", code);
		put_str(&w, "detail", detail);
		if (msg.id)
			put_str(&w, "id", msg.id);
	}
	else
	{
		put_str(&w, "type", rtsub_msg_type_name(msg.type));
		put_str(&w, "id", msg.id);
		put_str(&w, "subscription", msg.subscription);
		put_str(&w, "params_json", msg.params_json);
		w.enc->key(&w, "snapshot", 8);
		w.enc->boolean(&w, msg.snapshot);
		put_str(&w, "resume_epoch", msg.resume_epoch);
		put_str(&w, "resume_after", msg.resume_after);
		put_int(&w, "chunk_rows", msg.chunk_rows);
		put_int(&w, "chunk_bytes", msg.chunk_bytes);
		put_int(&w, "batch_size", msg.batch_size);
		put_int(&w, "throttle_ms", msg.throttle_ms);
		w.enc->key(&w, "include_metadata", 16);
		w.enc->boolean(&w, msg.include_metadata);
		put_int(&w, "priority", msg.priority);
		put_str(&w, "nonce", msg.nonce);
		put_str(&w, "token", msg.token);
	}
	w.enc->map_end(&w);

	/* everything parsed is UTF-8; the database may use another encoding */
	json = pg_any_to_server(buf.data, buf.len, PG_UTF8);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* append a StringInfo's bytes to a materialized SRF's result as bytea */
static void
put_bytea_row(ReturnSetInfo *rsinfo, StringInfo s)
{
	bytea	   *b = palloc(VARHDRSZ + s->len);
	Datum		value;
	bool		isnull = false;

	SET_VARSIZE(b, VARHDRSZ + s->len);
	memcpy(VARDATA(b), s->data, s->len);
	value = PointerGetDatum(b);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	resetStringInfo(s);
}

/*
 * rtsub._test_server_messages(format text) returns setof bytea: one of each
 * server message built here, with fixed arguments, for tests
 */
Datum
rtsub_test_server_messages(PG_FUNCTION_ARGS)
{
	RtsubFormat f = format_arg(PG_GETARG_TEXT_PP(0));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StringInfoData s;
	RtsubWelcome wel = {
		.server = "rtsub/0.1",
		.epoch = "7123456789012345678-1",
		.role = "app_user \"quoted\" \xc3\xa9",
		.exp = 1700000000,
		.heartbeat_ms = 15000,
		.max_subscriptions = 100,
		.max_message_size = 65536,
		.max_messages_per_second = 50,
		.max_send_buffer = 8388608,
	};

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	initStringInfo(&s);

	rtsub_msg_welcome(&s, f, &wel);
	put_bytea_row(rsinfo, &s);
	wel.exp = -1;
	rtsub_msg_welcome(&s, f, &wel);
	put_bytea_row(rsinfo, &s);
	rtsub_msg_subscribed(&s, f, "sub-1", "0/1A2B3C8:3", "00c0ffee12345678", true, false);
	put_bytea_row(rsinfo, &s);
	rtsub_msg_live(&s, f, "sub-1", "0/1A2B3F0:2", "00c0ffee12345678");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_unsubscribed(&s, f, "sub-1");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "\"n\\u00e9\\n\"");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "42");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "-1.5e3");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "18446744073709551615");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "true");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, "null");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_pong(&s, f, NULL);
	put_bytea_row(rsinfo, &s);
	rtsub_msg_refreshed(&s, f, 1700003600);
	put_bytea_row(rsinfo, &s);
	rtsub_msg_error(&s, f, "bad_field", "field \"id\" must be a string", "sub-1");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_error(&s, f, "bad_message", "invalid JSON", NULL);
	put_bytea_row(rsinfo, &s);
	rtsub_msg_heartbeat(&s, f, "16/B374D848:0");
	put_bytea_row(rsinfo, &s);
	rtsub_msg_reset(&s, f, "sub-1", "epoch changed");
	put_bytea_row(rsinfo, &s);

	return (Datum) 0;
}
