/*-------------------------------------------------------------------------
 *
 * encode.h
 *	  The writer interface shared by the JSON and MessagePack encoders.
 *
 * A record is written as a tree of maps, arrays and scalars through an
 * RtsubEncoder; the JSON and MessagePack encoders implement it so that the
 * decoder (and later the protocol) writes every record once, format-blind.
 * MessagePack needs container sizes up front, so map_begin/array_begin take
 * the exact number of entries; JSON ignores it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_ENCODE_H
#define RTSUB_ENCODE_H

#include "postgres.h"

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

/* How a column's values are encoded, decided once per column */
typedef enum RtsubValueKind
{
	RTSUB_V_INT2,
	RTSUB_V_INT4,
	RTSUB_V_INT8,
	RTSUB_V_OID,
	RTSUB_V_FLOAT4,
	RTSUB_V_FLOAT8,
	RTSUB_V_BOOL,
	RTSUB_V_JSON,
	RTSUB_V_JSONB,
	RTSUB_V_BYTEA,
	RTSUB_V_TEXT,				/* text, varchar: the bytes are the text form */
	RTSUB_V_DATE,				/* date, timestamp, timestamptz: ISO 8601, */
	RTSUB_V_TIMESTAMP,			/* timestamptz in UTC, whatever DateStyle */
	RTSUB_V_TIMESTAMPTZ,		/* and TimeZone say */
	RTSUB_V_OTHER				/* anything else: the output function */
} RtsubValueKind;

/* A column to encode: name, kind and output function */
typedef struct RtsubColumn
{
	int			attnum;			/* 1-based attribute number */
	const char *name;
	int			namelen;
	const char *key;			/* the name as a map key, encoded once in */
	int			keylen;			/* the writer's format (JSON: "name":) */
	RtsubValueKind kind;
	FmgrInfo	output;			/* type output function (RTSUB_V_OTHER) */
} RtsubColumn;

typedef enum RtsubFormat
{
	RTSUB_FORMAT_JSON,
	RTSUB_FORMAT_MSGPACK
} RtsubFormat;

typedef struct RtsubWriter RtsubWriter;

/*
 * The encoder operations.  Strings passed to key() and str() must be
 * NUL-terminated at len (JSON escaping works on C strings); bin() data need
 * not be.
 */
typedef struct RtsubEncoder
{
	void		(*map_begin) (RtsubWriter *w, int n);
	void		(*map_end) (RtsubWriter *w);
	void		(*array_begin) (RtsubWriter *w, int n);
	void		(*array_end) (RtsubWriter *w);
	void		(*key) (RtsubWriter *w, const char *k, int len);
	void		(*fragment) (RtsubWriter *w, const char *bytes, int len);
	void		(*str) (RtsubWriter *w, const char *s, int len);
	void		(*int64) (RtsubWriter *w, int64 v);
	void		(*boolean) (RtsubWriter *w, bool v);
	void		(*null) (RtsubWriter *w);
	void		(*instant) (RtsubWriter *w, TimestampTz t);
	void		(*bin) (RtsubWriter *w, const char *data, int len);
	void		(*value) (RtsubWriter *w, const RtsubColumn *col, Datum d);
} RtsubEncoder;

#define RTSUB_MAX_DEPTH 64

struct RtsubWriter
{
	StringInfo	out;
	const RtsubEncoder *enc;
	int			depth;
	bool		after_key;		/* JSON: a key was just written */
	bool		first[RTSUB_MAX_DEPTH];	/* JSON: no comma before next item */
};

extern const RtsubEncoder rtsub_json_encoder;
extern const RtsubEncoder rtsub_msgpack_encoder;

extern void rtsub_writer_init(RtsubWriter *w, StringInfo out, RtsubFormat format);
extern RtsubValueKind rtsub_value_kind(Oid typid);
extern void rtsub_column_init(RtsubColumn *col, const char *name, Oid typid,
							  RtsubFormat format, MemoryContext cxt);
extern void rtsub_fragment_begin(RtsubWriter *w, StringInfo buf, RtsubFormat format);
extern char *rtsub_output_text(const RtsubColumn *col, Datum d);
extern char *rtsub_iso_datetime(const RtsubColumn *col, Datum d, char *buf);

/*
 * Fragments: key/value pairs of a map encoded once and appended many times
 * (a transaction's lsn and time, a table's name, a column's key).  Build one
 * with rtsub_fragment_begin() and the usual key/value calls; append it inside
 * a map with fragment(), counting its pairs in the map's size.
 */

/* append a pre-encoded column key; its value follows */
static inline void
rtsub_column_key(RtsubWriter *w, const RtsubColumn *col)
{
	w->enc->fragment(w, col->key, col->keylen);
	w->after_key = true;
}

/* Convenience: key followed by a string value */
static inline void
rtsub_put_kv_str(RtsubWriter *w, const char *k, const char *v)
{
	w->enc->key(w, k, strlen(k));
	w->enc->str(w, v, strlen(v));
}

#endif							/* RTSUB_ENCODE_H */
