/*-------------------------------------------------------------------------
 *
 * encode_json.c
 *	  The JSON encoder: writes records and typed column values as JSON.
 *
 * Integers and floats become JSON numbers (NaN and infinities become
 * strings), booleans and NULL their JSON literals, json and jsonb values
 * are embedded, everything else is the type's text form as a JSON string
 * escaped by PostgreSQL's escape_json().  Output never contains a raw
 * newline, so one record is one line.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/shortest_dec.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "encode.h"

/*
 * write the separator owed before a value: none right after a key (the key
 * wrote it), a comma before every item of a container but the first
 */
static inline void
json_value_sep(RtsubWriter *w)
{
	if (w->after_key)
		w->after_key = false;
	else if (w->first[w->depth])
		w->first[w->depth] = false;
	else
		appendStringInfoCharMacro(w->out, ',');
}

/* open a container (itself a value) */
static void
json_open(RtsubWriter *w, char c)
{
	json_value_sep(w);
	if (w->depth + 1 >= RTSUB_MAX_DEPTH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("rtsub record nesting exceeds %d levels", RTSUB_MAX_DEPTH)));
	appendStringInfoCharMacro(w->out, c);
	w->depth++;
	w->first[w->depth] = true;
}

/* begin a JSON object */
static void
json_map_begin(RtsubWriter *w, int n)
{
	json_open(w, '{');
}

/* end a JSON object */
static void
json_map_end(RtsubWriter *w)
{
	w->depth--;
	appendStringInfoCharMacro(w->out, '}');
}

/* begin a JSON array */
static void
json_array_begin(RtsubWriter *w, int n)
{
	json_open(w, '[');
}

/* end a JSON array */
static void
json_array_end(RtsubWriter *w)
{
	w->depth--;
	appendStringInfoCharMacro(w->out, ']');
}

/* write a separator and an escaped key; the value follows */
static void
json_key(RtsubWriter *w, const char *k, int len)
{
	json_value_sep(w);
	escape_json(w->out, k);
	appendStringInfoCharMacro(w->out, ':');
	w->after_key = true;
}

/*
 * append a fragment of pairs ("k":v,"k2":v2) inside a map; the separator
 * rule is that of the pair it starts with
 */
static void
json_fragment(RtsubWriter *w, const char *bytes, int len)
{
	if (len == 0)
		return;
	json_value_sep(w);
	appendBinaryStringInfo(w->out, bytes, len);
}

/* write an escaped string (terminated at len, see encode.h) */
static void
json_str(RtsubWriter *w, const char *s, int len)
{
	json_value_sep(w);
	escape_json(w->out, s);
}

/* write an integer */
static void
json_int64(RtsubWriter *w, int64 v)
{
	char		buf[MAXINT8LEN + 1];
	int			len;

	json_value_sep(w);
	len = pg_lltoa(v, buf);
	appendBinaryStringInfo(w->out, buf, len);
}

/* write a boolean */
static void
json_boolean(RtsubWriter *w, bool v)
{
	json_value_sep(w);
	if (v)
		appendBinaryStringInfo(w->out, "true", 4);
	else
		appendBinaryStringInfo(w->out, "false", 5);
}

/* write null */
static void
json_null(RtsubWriter *w)
{
	json_value_sep(w);
	appendBinaryStringInfo(w->out, "null", 4);
}

/*
 * write an instant (a record's commit time) as ISO 8601 in UTC with a fixed
 * six-digit fraction
 */
static void
json_instant(RtsubWriter *w, TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[MAXDATELEN + 1];

	json_value_sep(w);
	if (TIMESTAMP_NOT_FINITE(t) ||
		timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(w->out, TIMESTAMP_IS_NOBEGIN(t) ?
							   "\"-infinity\"" : "\"infinity\"");
		return;
	}
	snprintf(buf, sizeof(buf), "\"%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00\"",
			 tm.tm_year, tm.tm_mon, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
	appendStringInfoString(w->out, buf);
}

/* write binary data as a hex string with a \x prefix, like bytea's text form */
static void
json_bin(RtsubWriter *w, const char *data, int len)
{
	static const char hex[] = "0123456789abcdef";
	StringInfo	out = w->out;
	int			i;

	json_value_sep(w);
	enlargeStringInfo(out, len * 2 + 5);
	out->data[out->len++] = '"';
	out->data[out->len++] = '\\';
	out->data[out->len++] = '\\';
	out->data[out->len++] = 'x';
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) data[i];

		out->data[out->len++] = hex[c >> 4];
		out->data[out->len++] = hex[c & 0xf];
	}
	out->data[out->len++] = '"';
	out->data[out->len] = '\0';
}

/* write a float as a JSON number, or NaN/Infinity as strings */
static void
json_float(RtsubWriter *w, double v, bool is_float4)
{
	char		buf[32];
	int			len;

	json_value_sep(w);
	if (isnan(v))
		appendBinaryStringInfo(w->out, "\"NaN\"", 5);
	else if (isinf(v))
	{
		if (v > 0)
			appendBinaryStringInfo(w->out, "\"Infinity\"", 10);
		else
			appendBinaryStringInfo(w->out, "\"-Infinity\"", 11);
	}
	else
	{
		if (is_float4)
			len = float_to_shortest_decimal_bufn((float) v, buf);
		else
			len = double_to_shortest_decimal_bufn(v, buf);
		appendBinaryStringInfo(w->out, buf, len);
	}
}

/*
 * embed a json value; raw newlines can only be insignificant whitespace in
 * valid JSON, so they become spaces to keep one record on one line
 */
static void
json_embed(RtsubWriter *w, const char *s, int len)
{
	int			start;
	int			i;

	json_value_sep(w);
	start = w->out->len;
	appendBinaryStringInfo(w->out, s, len);
	if (memchr(s, '\n', len) != NULL || memchr(s, '\r', len) != NULL)
	{
		for (i = start; i < w->out->len; i++)
			if (w->out->data[i] == '\n' || w->out->data[i] == '\r')
				w->out->data[i] = ' ';
	}
}

/* write one column value in its JSON form */
static void
json_value(RtsubWriter *w, const RtsubColumn *col, Datum d)
{
	switch (col->kind)
	{
		case RTSUB_V_INT2:
			json_int64(w, DatumGetInt16(d));
			break;
		case RTSUB_V_INT4:
			json_int64(w, DatumGetInt32(d));
			break;
		case RTSUB_V_INT8:
			json_int64(w, DatumGetInt64(d));
			break;
		case RTSUB_V_OID:
			json_int64(w, (int64) DatumGetObjectId(d));
			break;
		case RTSUB_V_FLOAT4:
			json_float(w, DatumGetFloat4(d), true);
			break;
		case RTSUB_V_FLOAT8:
			json_float(w, DatumGetFloat8(d), false);
			break;
		case RTSUB_V_BOOL:
			json_boolean(w, DatumGetBool(d));
			break;
		case RTSUB_V_JSON:
			{
				text	   *t = DatumGetTextPP(d);

				json_embed(w, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		case RTSUB_V_JSONB:
			{
				Jsonb	   *jb = DatumGetJsonbP(d);
				char	   *s = JsonbToCString(NULL, &jb->root, VARSIZE(jb));

				json_value_sep(w);
				appendStringInfoString(w->out, s);
				break;
			}
		case RTSUB_V_BYTEA:
			{
				bytea	   *b = DatumGetByteaPP(d);

				json_bin(w, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
				break;
			}
		case RTSUB_V_TEXT:
			{
				char	   *s = TextDatumGetCString(d);

				json_value_sep(w);
				escape_json(w->out, s);
				break;
			}
		case RTSUB_V_DATE:
		case RTSUB_V_TIMESTAMP:
		case RTSUB_V_TIMESTAMPTZ:
			{
				char		buf[MAXDATELEN + 1];

				json_value_sep(w);
				escape_json(w->out, rtsub_iso_datetime(col, d, buf));
				break;
			}
		case RTSUB_V_OTHER:
			{
				char	   *s = rtsub_output_text(col, d);

				json_value_sep(w);
				escape_json(w->out, s);
				break;
			}
	}
}

const RtsubEncoder rtsub_json_encoder = {
	.map_begin = json_map_begin,
	.map_end = json_map_end,
	.array_begin = json_array_begin,
	.array_end = json_array_end,
	.key = json_key,
	.fragment = json_fragment,
	.str = json_str,
	.int64 = json_int64,
	.boolean = json_boolean,
	.null = json_null,
	.instant = json_instant,
	.bin = json_bin,
	.value = json_value,
};
