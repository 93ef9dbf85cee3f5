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
#include <stdlib.h>

#include <msgpack.h>

#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "encode.h"

/* msgpack-c write callback: append to the writer's StringInfo */
static int
mp_write(void *data, const char *buf, size_t len)
{
	appendBinaryStringInfo((StringInfo) data, buf, (int) len);
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

/* write bin */
static void
mp_bin(RtsubWriter *w, const char *data, int len)
{
	MP_PACKER(w, pk);
	msgpack_pack_bin_with_body(&pk, data, (size_t) len);
}

/* write a JSON number: int when integral and within 64 bits, else float 64 */
static void
mp_json_number(msgpack_packer *pk, Numeric n)
{
	char	   *s = numeric_normalize(n);
	char	   *end;

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
	msgpack_pack_double(pk, strtod(s, NULL));
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
	bool		raw_scalar = false;

	MP_PACKER(w, pk);

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (v.val.array.rawScalar)
					raw_scalar = true;
				else
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
	(void) raw_scalar;
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
			{
				char	   *s = TextDatumGetCString(d);

				mp_jsonb(w, DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															   CStringGetDatum(s))));
				break;
			}
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
	.str = mp_str,
	.int64 = mp_int64,
	.boolean = mp_boolean,
	.null = mp_null,
	.bin = mp_bin,
	.value = mp_value,
};
