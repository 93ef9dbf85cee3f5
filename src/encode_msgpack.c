/*-------------------------------------------------------------------------
 *
 * encode_msgpack.c
 *	  The MessagePack encoder: writes records and typed column values with
 *	  msgpack-c's packer, appending to a StringInfo.
 *
 * It carries exactly the information of the JSON form: integers as int,
 * floats as float 32/64 (NaN and infinities as IEEE values), booleans,
 * nil, bytea as bin, json and jsonb converted to native maps and arrays,
 * everything else as the type's text form in a str.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include <msgpack.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "encode.h"

/*
 * msgpack-c write callback: append to the writer's StringInfo.  The packer
 * calls it for every header and body separately, so the common case of
 * enough room is kept to a bounds check and a memcpy.
 */
static void mp_number_text(msgpack_packer *pk, const char *s);

static int
mp_write(void *data, const char *buf, size_t len)
{
	StringInfo	out = (StringInfo) data;

	if (unlikely((size_t) out->len + len >= (size_t) out->maxlen))
		enlargeStringInfo(out, (int) len);
	memcpy(out->data + out->len, buf, len);
	out->len += (int) len;
	out->data[out->len] = '\0';
	return 0;
}

/* a packer writing to the writer's buffer (cheap: two pointers) */
#define MP_PACKER(w, pk) \
	msgpack_packer pk; \
	msgpack_packer_init(&pk, (void *) (w)->out, mp_write)

/* begin a map of n pairs */
static void
mp_map_begin(RtsubWriter *w, int n)
{
	MP_PACKER(w, pk);
	msgpack_pack_map(&pk, (size_t) n);
}

/* nothing marks the end of a MessagePack container */
static void
mp_end(RtsubWriter *w)
{
}

/* begin an array of n items */
static void
mp_array_begin(RtsubWriter *w, int n)
{
	MP_PACKER(w, pk);
	msgpack_pack_array(&pk, (size_t) n);
}

/* write a str */
static void
mp_str(RtsubWriter *w, const char *s, int len)
{
	MP_PACKER(w, pk);
	msgpack_pack_str_with_body(&pk, s, (size_t) len);
}

/* append pre-encoded pairs */
static void
mp_fragment(RtsubWriter *w, const char *bytes, int len)
{
	mp_write(w->out, bytes, (size_t) len);
}

/* write an integer in its smallest form */
static void
mp_int64(RtsubWriter *w, int64 v)
{
	MP_PACKER(w, pk);
	msgpack_pack_int64(&pk, v);
}

/* write a boolean */
static void
mp_boolean(RtsubWriter *w, bool v)
{
	MP_PACKER(w, pk);
	if (v)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
}

/* write nil */
static void
mp_null(RtsubWriter *w)
{
	MP_PACKER(w, pk);
	msgpack_pack_nil(&pk);
}

/*
 * write an instant as the MessagePack timestamp extension (type -1), which
 * decoders turn into their native time type; infinities, which it cannot
 * hold, as the strings of the JSON form
 */
static void
mp_instant(RtsubWriter *w, TimestampTz t)
{
	msgpack_timestamp mt;
	int64		unix_us;

	MP_PACKER(w, pk);

	if (TIMESTAMP_NOT_FINITE(t))
	{
		const char *s = TIMESTAMP_IS_NOBEGIN(t) ? "-infinity" : "infinity";

		msgpack_pack_str_with_body(&pk, s, strlen(s));
		return;
	}
	unix_us = t + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	mt.tv_sec = unix_us / USECS_PER_SEC;
	if (unix_us % USECS_PER_SEC < 0)
		mt.tv_sec--;
	mt.tv_nsec = (uint32_t) ((unix_us - mt.tv_sec * USECS_PER_SEC) * 1000);
	msgpack_pack_timestamp(&pk, &mt);
}

/* write bin */
static void
mp_bin(RtsubWriter *w, const char *data, int len)
{
	MP_PACKER(w, pk);
	msgpack_pack_bin_with_body(&pk, data, (size_t) len);
}

/* write a jsonb number like a json one */
static void
mp_json_number(msgpack_packer *pk, Numeric n)
{
	mp_number_text(pk, numeric_normalize(n));
}

/* write a jsonb scalar */
static void
mp_jsonb_scalar(msgpack_packer *pk, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			msgpack_pack_nil(pk);
			break;
		case jbvString:
			msgpack_pack_str_with_body(pk, v->val.string.val,
									   (size_t) v->val.string.len);
			break;
		case jbvNumeric:
			mp_json_number(pk, v->val.numeric);
			break;
		case jbvBool:
			if (v->val.boolean)
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/* convert a jsonb document to native MessagePack maps, arrays and scalars */
static void
mp_jsonb(RtsubWriter *w, Jsonb *jb)
{
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken tok;

	MP_PACKER(w, pk);

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (!v.val.array.rawScalar)	/* a lone scalar is no array */
					msgpack_pack_array(&pk, (size_t) v.val.array.nElems);
				break;
			case WJB_BEGIN_OBJECT:
				msgpack_pack_map(&pk, (size_t) v.val.object.nPairs);
				break;
			case WJB_KEY:
			case WJB_VALUE:
			case WJB_ELEM:
				mp_jsonb_scalar(&pk, &v);
				break;
			case WJB_END_ARRAY:
			case WJB_END_OBJECT:
				break;
			default:
				elog(ERROR, "unexpected jsonb iterator token %d", (int) tok);
		}
	}
}

/*
 * json values are converted with PostgreSQL's JSON parser in two passes:
 * the first counts the entries of every object and array (MessagePack
 * writes sizes up front), the second writes them.  Unlike going through
 * jsonb, this keeps key order and duplicate keys, as the JSON form does.
 */
typedef struct JsonMp
{
	msgpack_packer *pk;			/* NULL in the counting pass */
	int		   *counts;			/* entries per container, in start order */
	int			ncontainers;
	int			maxcontainers;
	int		   *stack;			/* open containers (indexes into counts) */
	int			depth;
	int			next;			/* writing pass: next container to open */
} JsonMp;

/* counting pass: a container starts */
static void
jm_count_start(void *state)
{
	JsonMp	   *jm = state;

	if (jm->ncontainers == jm->maxcontainers)
	{
		jm->maxcontainers *= 2;
		jm->counts = repalloc(jm->counts, sizeof(int) * jm->maxcontainers);
		jm->stack = repalloc(jm->stack, sizeof(int) * jm->maxcontainers);
	}
	jm->counts[jm->ncontainers] = 0;
	jm->stack[jm->depth++] = jm->ncontainers++;
}

/* counting pass: a container ends */
static void
jm_count_end(void *state)
{
	((JsonMp *) state)->depth--;
}

/* counting pass: an object field or array element */
static void
jm_count_entry(void *state)
{
	JsonMp	   *jm = state;

	jm->counts[jm->stack[jm->depth - 1]]++;
}

/* counting pass: object field start */
static void
jm_count_field(void *state, char *fname, bool isnull)
{
	jm_count_entry(state);
}

/* counting pass: array element start */
static void
jm_count_elem(void *state, bool isnull)
{
	jm_count_entry(state);
}

/* writing pass: an object starts */
static void
jm_write_object(void *state)
{
	JsonMp	   *jm = state;

	msgpack_pack_map(jm->pk, (size_t) jm->counts[jm->next++]);
}

/* writing pass: an array starts */
static void
jm_write_array(void *state)
{
	JsonMp	   *jm = state;

	msgpack_pack_array(jm->pk, (size_t) jm->counts[jm->next++]);
}

/* writing pass: an object key */
static void
jm_write_field(void *state, char *fname, bool isnull)
{
	msgpack_pack_str_with_body(((JsonMp *) state)->pk, fname, strlen(fname));
}

/*
 * a JSON number: an int when its value is integral and fits in 64 bits
 * (within +-2^53 when written with a fraction or exponent, where a double
 * is exact), else a float 64
 */
static void
mp_number_text(msgpack_packer *pk, const char *s)
{
	char	   *end;
	double		d;

	if (strpbrk(s, ".eE") == NULL)
	{
		long long	v;

		errno = 0;
		v = strtoll(s, &end, 10);
		if (errno == 0 && *end == '\0')
		{
			msgpack_pack_int64(pk, (int64_t) v);
			return;
		}
	}
	d = strtod(s, NULL);
	if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0)
		msgpack_pack_int64(pk, (int64_t) d);
	else
		msgpack_pack_double(pk, d);
}

/* writing pass: a scalar */
static void
jm_write_scalar(void *state, char *token, JsonTokenType type)
{
	msgpack_packer *pk = ((JsonMp *) state)->pk;

	switch (type)
	{
		case JSON_TOKEN_STRING:
			msgpack_pack_str_with_body(pk, token, strlen(token));
			break;
		case JSON_TOKEN_NUMBER:
			mp_number_text(pk, token);
			break;
		case JSON_TOKEN_TRUE:
			msgpack_pack_true(pk);
			break;
		case JSON_TOKEN_FALSE:
			msgpack_pack_false(pk);
			break;
		default:
			msgpack_pack_nil(pk);
			break;
	}
}

/*
 * convert json text to native MessagePack; text the parser cannot
 * de-escape (a \u0000 escape, which text cannot hold) is sent as a str
 * holding the JSON text, never an error that would stop decoding
 */
static void
mp_json(RtsubWriter *w, text *t)
{
	char	   *json = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	JsonMp		jm;
	JsonSemAction sem;
	JsonLexContext *lex;
	MP_PACKER(w, pk);

	memset(&jm, 0, sizeof(jm));
	jm.maxcontainers = 16;
	jm.counts = palloc(sizeof(int) * jm.maxcontainers);
	jm.stack = palloc(sizeof(int) * jm.maxcontainers);

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &jm;
	sem.object_start = jm_count_start;
	sem.object_end = jm_count_end;
	sem.array_start = jm_count_start;
	sem.array_end = jm_count_end;
	sem.object_field_start = jm_count_field;
	sem.array_element_start = jm_count_elem;
	lex = makeJsonLexContextCstringLen(json, len, GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
	{
		msgpack_pack_str_with_body(&pk, json, (size_t) len);
		return;
	}

	jm.pk = &pk;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &jm;
	sem.object_start = jm_write_object;
	sem.array_start = jm_write_array;
	sem.object_field_start = jm_write_field;
	sem.scalar = jm_write_scalar;
	lex = makeJsonLexContextCstringLen(json, len, GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
		elog(ERROR, "json value changed between parses");
}

/* write one column value in its MessagePack form */
static void
mp_value(RtsubWriter *w, const RtsubColumn *col, Datum d)
{
	MP_PACKER(w, pk);

	switch (col->kind)
	{
		case RTSUB_V_INT2:
			msgpack_pack_int64(&pk, DatumGetInt16(d));
			break;
		case RTSUB_V_INT4:
			msgpack_pack_int64(&pk, DatumGetInt32(d));
			break;
		case RTSUB_V_INT8:
			msgpack_pack_int64(&pk, DatumGetInt64(d));
			break;
		case RTSUB_V_OID:
			msgpack_pack_uint32(&pk, DatumGetObjectId(d));
			break;
		case RTSUB_V_FLOAT4:
			msgpack_pack_float(&pk, DatumGetFloat4(d));
			break;
		case RTSUB_V_FLOAT8:
			msgpack_pack_double(&pk, DatumGetFloat8(d));
			break;
		case RTSUB_V_BOOL:
			if (DatumGetBool(d))
				msgpack_pack_true(&pk);
			else
				msgpack_pack_false(&pk);
			break;
		case RTSUB_V_JSON:
			mp_json(w, DatumGetTextPP(d));
			break;
		case RTSUB_V_JSONB:
			mp_jsonb(w, DatumGetJsonbP(d));
			break;
		case RTSUB_V_BYTEA:
			{
				bytea	   *b = DatumGetByteaPP(d);

				msgpack_pack_bin_with_body(&pk, VARDATA_ANY(b),
										   VARSIZE_ANY_EXHDR(b));
				break;
			}
		case RTSUB_V_TEXT:
			{
				text	   *t = DatumGetTextPP(d);

				msgpack_pack_str_with_body(&pk, VARDATA_ANY(t),
										   VARSIZE_ANY_EXHDR(t));
				break;
			}
		case RTSUB_V_DATE:
		case RTSUB_V_TIMESTAMP:
		case RTSUB_V_TIMESTAMPTZ:
			{
				char		buf[MAXDATELEN + 1];
				char	   *s = rtsub_iso_datetime(col, d, buf);

				msgpack_pack_str_with_body(&pk, s, strlen(s));
				break;
			}
		case RTSUB_V_OTHER:
			{
				char	   *s = rtsub_output_text(col, d);

				msgpack_pack_str_with_body(&pk, s, strlen(s));
				break;
			}
	}
}

const RtsubEncoder rtsub_msgpack_encoder = {
	.map_begin = mp_map_begin,
	.map_end = mp_end,
	.array_begin = mp_array_begin,
	.array_end = mp_end,
	.key = mp_str,
	.fragment = mp_fragment,
	.str = mp_str,
	.int64 = mp_int64,
	.boolean = mp_boolean,
	.null = mp_null,
	.instant = mp_instant,
	.bin = mp_bin,
	.value = mp_value,
};
