/*-------------------------------------------------------------------------
 *
 * encode.c
 *	  What the JSON and MessagePack encoders share: choosing how a type is
 *	  encoded, the text form of a value, and setting up a writer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/lsyscache.h"

#include "encode.h"

/* decide once per column how values of a type are encoded */
RtsubValueKind
rtsub_value_kind(Oid typid)
{
	switch (getBaseType(typid))
	{
		case INT2OID:
			return RTSUB_V_INT2;
		case INT4OID:
			return RTSUB_V_INT4;
		case INT8OID:
			return RTSUB_V_INT8;
		case OIDOID:
			return RTSUB_V_OID;
		case FLOAT4OID:
			return RTSUB_V_FLOAT4;
		case FLOAT8OID:
			return RTSUB_V_FLOAT8;
		case BOOLOID:
			return RTSUB_V_BOOL;
		case JSONOID:
			return RTSUB_V_JSON;
		case JSONBOID:
			return RTSUB_V_JSONB;
		case BYTEAOID:
			return RTSUB_V_BYTEA;
		case TEXTOID:
		case VARCHAROID:
			return RTSUB_V_TEXT;
		case DATEOID:
			return RTSUB_V_DATE;
		case TIMESTAMPOID:
			return RTSUB_V_TIMESTAMP;
		case TIMESTAMPTZOID:
			return RTSUB_V_TIMESTAMPTZ;
		default:
			return RTSUB_V_OTHER;
	}
}

/* describe a column once: its name, encoded key, encoding and output function */
void
rtsub_column_init(RtsubColumn *col, const char *name, Oid typid,
				  RtsubFormat format, MemoryContext cxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	StringInfoData key;
	RtsubWriter w;
	Oid			outfunc;
	bool		isvarlena;

	col->name = pstrdup(name);
	col->namelen = strlen(name);
	initStringInfo(&key);
	rtsub_fragment_begin(&w, &key, format);
	w.enc->key(&w, col->name, col->namelen);
	col->key = key.data;
	col->keylen = key.len;
	col->kind = rtsub_value_kind(typid);
	getTypeOutputInfo(typid, &outfunc, &isvarlena);
	fmgr_info_cxt(outfunc, &col->output, cxt);
	MemoryContextSwitchTo(oldcxt);
}

/* start writing map pairs into buf, to be appended later as a fragment */
void
rtsub_fragment_begin(RtsubWriter *w, StringInfo buf, RtsubFormat format)
{
	resetStringInfo(buf);
	rtsub_writer_init(w, buf, format);
	w->depth = 1;				/* as if inside a map, as its first pair */
	w->first[1] = true;
}

/* return a value's text form through its type's output function */
char *
rtsub_output_text(const RtsubColumn *col, Datum d)
{
	return OutputFunctionCall((FmgrInfo *) &col->output, d);
}

/*
 * format a date, timestamp or timestamptz as ISO 8601 (timestamptz in UTC)
 * into buf (MAXDATELEN + 1 bytes), independent of DateStyle and TimeZone
 */
char *
rtsub_iso_datetime(const RtsubColumn *col, Datum d, char *buf)
{
	static const int utc = 0;
	Oid			typid = col->kind == RTSUB_V_DATE ? DATEOID :
		col->kind == RTSUB_V_TIMESTAMP ? TIMESTAMPOID : TIMESTAMPTZOID;

	return JsonEncodeDateTime(buf, d, typid, &utc);
}

/* set up a writer that appends records in the given format to out */
void
rtsub_writer_init(RtsubWriter *w, StringInfo out, RtsubFormat format)
{
	w->out = out;
	w->enc = (format == RTSUB_FORMAT_MSGPACK) ?
		&rtsub_msgpack_encoder : &rtsub_json_encoder;
	w->depth = 0;
	w->after_key = false;
	w->first[0] = true;
}
