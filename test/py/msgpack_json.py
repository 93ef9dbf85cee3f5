#!/usr/bin/python3
"""msgpack_json — the rtsub output plugin's MessagePack records carry exactly
the information of its JSON records (docs/output-plugin.md).

Independent decoders: python's json module (object_pairs_hook, numbers as
Decimal) for the JSON form, Debian's python3-msgpack for the MessagePack
form.  A table with many built-in types (plus enum, domain, composite,
dropped and generated columns, a large TOASTed value) and a REPLICA IDENTITY
FULL table go through inserts, updates (TOAST unchanged, key change),
deletes, a truncate and transactional logical messages.  Two slots created
before the changes are peeked with the same options in both formats (four
option sets) and compared record by record under the documented mapping;
a third slot is read with the real pg_recvlogical (-o format=msgpack) and
must give the same records, byte for byte, as pg_logical_slot_peek_binary_changes.

Run by test/run (py suite) with /usr/bin/python3; prints TAP.
"""

import decimal
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
from decimal import Decimal

import datetime
import json
import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rtsub_testlib import Psql, Tap, b64_field, b64decode, lsn_to_int  # noqa: E402

DB = 'rtsub_msgpack_test'
SLOT_JSON, SLOT_MP, SLOT_RECV, SLOT_NUL = 'rtsub_mpj_json', 'rtsub_mpj_mp', 'rtsub_mpj_recv', 'rtsub_mpj_nul'
ALL_SLOTS = (SLOT_JSON, SLOT_MP, SLOT_RECV, SLOT_NUL)

decimal.getcontext().prec = 2000
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAP_START = set(range(0x80, 0x90)) | {0xde, 0xdf}


class Obj(list):
    """A JSON object / MessagePack map as its list of (key, value) pairs."""

    def __repr__(self):
        return '{' + ', '.join('%r: %r' % (k, v) for k, v in self) + '}'


def load_json(text):
    return json.loads(text, object_pairs_hook=Obj, parse_float=FloatText,
                      parse_int=Decimal, parse_constant=lambda c: ('CONST', c))


def new_unpacker():
    return msgpack.Unpacker(raw=False, object_pairs_hook=Obj, strict_map_key=True,
                            use_list=True, max_buffer_size=1 << 30)


def load_msgpack(data):
    """(obj, problem): exactly one complete object that consumes all bytes."""
    if not data:
        return None, 'empty record'
    if data[0] not in MAP_START:
        return None, 'first byte 0x%02x is not a map header' % data[0]
    u = new_unpacker()
    u.feed(data)
    try:
        obj = u.unpack()
    except msgpack.OutOfData:
        return None, 'incomplete object (%d bytes)' % len(data)
    except Exception as e:  # noqa: BLE001
        return None, 'undecodable: %r' % e
    if u.tell() != len(data):
        return obj, 'object ends at byte %d of %d (trailing bytes)' % (u.tell(), len(data))
    return obj, None


def short(v, n=160):
    r = str(v) if isinstance(v, Decimal) else repr(v)
    if len(r) > n:
        r = r[:n] + '...(%d chars)' % len(r)
    return r


def fbits(x):
    return struct.pack('>d', x)


def to_f32(x):
    try:
        return struct.unpack('>f', struct.pack('>f', x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


# --------------------------------------------------------------- comparison

class Diffs:
    def __init__(self):
        self.value = []      # genuine differences
        self.jsonkeys = []   # key order / duplicate keys inside json values

    def add(self, path, msg, jv=None, mv=None, kind='value', values=True):
        line = '%s: %s' % (path, msg)
        if values:
            line += '; JSON %s, msgpack %s' % (short(jv), short(mv))
        (self.jsonkeys if kind == 'jsonkeys' else self.value).append(line)


class FloatText(Decimal):
    """A JSON number written with a fraction or an exponent."""


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def dec_is_integral(d):
    return d.is_finite() and d == d.to_integral_value()


def cmp_json_value(jv, mv, path, d):
    """A json/jsonb column value: JSON (parsed, Decimal numbers) vs msgpack."""
    if jv is None or isinstance(jv, bool) or isinstance(jv, str):
        if type(jv) is not type(mv) or jv != mv:
            d.add(path, 'differs', jv, mv)
        return
    if isinstance(jv, Decimal):
        # docs/output-plugin.md: integral values within int64 are ints; when
        # written with a fraction or exponent, only within +-2^53
        lo, hi = (-2 ** 53, 2 ** 53) if isinstance(jv, FloatText) else (INT64_MIN, INT64_MAX)
        if dec_is_integral(jv) and lo <= int(jv) <= hi:
            if not is_int(mv) or mv != int(jv):
                d.add(path, 'integral number must be a msgpack int', jv, mv)
        else:
            want = float(jv)
            if not isinstance(mv, float) or fbits(mv) != fbits(want):
                d.add(path, 'non-integral or out-of-int64 number must be float64 %r' % want, jv, mv)
        return
    if isinstance(jv, Obj):
        if not isinstance(mv, Obj):
            d.add(path, 'object vs non-map', jv, mv)
            return
        jkeys = [k for k, _ in jv]
        mkeys = [k for k, _ in mv]
        if jkeys == mkeys:
            for (k, a), (_, b) in zip(jv, mv):
                cmp_json_value(a, b, '%s.%s' % (path, k), d)
            return
        d.add(path, 'object keys differ in order or duplicates: JSON keys %r, msgpack keys %r'
              % (jkeys, mkeys), kind='jsonkeys', values=False)
        # compare the values anyway, under "last duplicate wins" (jsonb) semantics
        jd, md = dict(jv), dict(mv)
        if len(md) != len(mkeys):
            d.add(path, 'msgpack map has duplicate keys %r' % mkeys, values=False)
        if set(jd) != set(md):
            d.add(path, 'different key sets', sorted(jd), sorted(md))
            return
        for k in jd:
            cmp_json_value(jd[k], md[k], '%s.%s' % (path, k), d)
        return
    if isinstance(jv, list):
        if not isinstance(mv, list) or isinstance(mv, Obj):
            d.add(path, 'array vs non-array', jv, mv)
            return
        if len(jv) != len(mv):
            d.add(path, 'array lengths %d vs %d' % (len(jv), len(mv)), jv, mv)
            return
        for i, (a, b) in enumerate(zip(jv, mv)):
            cmp_json_value(a, b, '%s[%d]' % (path, i), d)
        return
    d.add(path, 'unexpected JSON value type %s' % type(jv).__name__, jv, mv)


def cmp_float(jv, mv, path, d, width):
    if not isinstance(mv, float):
        d.add(path, 'msgpack value is not a float', jv, mv)
        return
    if isinstance(jv, str):
        if jv == 'NaN':
            ok = math.isnan(mv)
        elif jv == 'Infinity':
            ok = mv == math.inf
        elif jv == '-Infinity':
            ok = mv == -math.inf
        else:
            d.add(path, 'JSON float string is not NaN/Infinity/-Infinity', jv, mv)
            return
        if not ok:
            d.add(path, 'special value differs', jv, mv)
        return
    if not isinstance(jv, Decimal):
        d.add(path, 'JSON value is neither a number nor a special string', jv, mv)
        return
    want = float(jv)
    if width == 4:
        want = to_f32(want)
    if fbits(want) != fbits(mv):
        d.add(path, 'float%d value differs (JSON parses to %r)' % (width * 8, want), jv, mv)


def cmp_column(kind, jv, mv, path, d):
    if jv is None or mv is None:
        if not (jv is None and mv is None):
            d.add(path, 'NULL in only one form', jv, mv)
        return
    if kind in ('int', 'uint'):
        if not (isinstance(jv, Decimal) and dec_is_integral(jv)):
            d.add(path, 'JSON value is not an integer number', jv, mv)
        elif not is_int(mv) or mv != int(jv):
            d.add(path, 'integer differs', jv, mv)
        elif kind == 'uint' and mv < 0:
            d.add(path, 'oid must be unsigned', jv, mv)
    elif kind == 'f4':
        cmp_float(jv, mv, path, d, 4)
    elif kind == 'f8':
        cmp_float(jv, mv, path, d, 8)
    elif kind == 'bool':
        if not isinstance(jv, bool) or not isinstance(mv, bool) or jv != mv:
            d.add(path, 'boolean differs', jv, mv)
    elif kind == 'json':
        cmp_json_value(jv, mv, path, d)
    elif kind == 'bytea':
        if not isinstance(jv, str) or not jv.startswith('\\x'):
            d.add(path, 'JSON bytea is not a \\x hex string', jv, mv)
            return
        try:
            raw = bytes.fromhex(jv[2:])
        except ValueError:
            d.add(path, 'JSON bytea hex is malformed', jv, mv)
            return
        if not isinstance(mv, bytes):
            d.add(path, 'msgpack bytea is not bin (%s)' % type(mv).__name__, jv, mv)
        elif raw != mv:
            d.add(path, 'bytes differ', jv, mv)
    else:  # 'str': numeric and every type sent as its text form
        if not isinstance(jv, str) or not isinstance(mv, str):
            d.add(path, 'text form expected as str in both', jv, mv)
        elif jv != mv:
            d.add(path, 'text differs', jv, mv)


def cmp_row(jrow, mrow, cols, path, d):
    if not isinstance(jrow, Obj) or not isinstance(mrow, Obj):
        d.add(path, 'row is not a map in both forms', jrow, mrow)
        return
    jk = [k for k, _ in jrow]
    mk = [k for k, _ in mrow]
    if jk != mk:
        d.add(path, 'column names/order differ', jk, mk)
        return
    for (k, jv), (_, mv) in zip(jrow, mrow):
        if k not in cols:
            d.add('%s.%s' % (path, k), 'not a column of the table', jv, mv)
            continue
        cmp_column(cols[k], jv, mv, '%s.%s' % (path, k), d)


def cmp_plain(jv, mv, path, d):
    """Record-level fields (lsn, pos, xid, ts, op, ..., unchanged, changes)."""
    if isinstance(jv, Decimal):
        if not (dec_is_integral(jv) and is_int(mv) and mv == int(jv)):
            d.add(path, 'integer differs', jv, mv)
    elif isinstance(jv, list):
        if not isinstance(mv, list) or len(jv) != len(mv):
            d.add(path, 'array differs', jv, mv)
        else:
            for i, (a, b) in enumerate(zip(jv, mv)):
                cmp_plain(a, b, '%s[%d]' % (path, i), d)
    elif type(jv) is not type(mv) or jv != mv:
        d.add(path, 'differs', jv, mv)


def cmp_record(jrec, mrec, tables, d):
    if not isinstance(jrec, Obj) or not isinstance(mrec, Obj):
        d.add('record', 'not a map in both forms', jrec, mrec)
        return
    jkeys = ['content' if k == 'content_hex' else k for k, _ in jrec]
    mkeys = [k for k, _ in mrec]
    if jkeys != mkeys:
        d.add('record', 'keys differ (JSON content_hex counted as content)',
              [k for k, _ in jrec], mkeys)
        return
    jd = dict(jrec)
    cols = tables.get((jd.get('schema'), jd.get('table')))
    for (jk, jv), (mk, mv) in zip(jrec, mrec):
        if mk in ('new', 'old', 'key'):
            if cols is None:
                d.add(mk, 'row of an unknown table %r' % ((jd.get('schema'), jd.get('table')),), jv, mv)
            else:
                cmp_row(jv, mv, cols, mk, d)
        elif jk == 'content_hex':
            if not isinstance(jv, str) or not jv.startswith('\\x'):
                d.add('content_hex', 'not a \\x hex string', jv, mv)
            elif not isinstance(mv, bytes):
                d.add('content', 'JSON has content_hex, msgpack content must be bin', jv, mv)
            elif bytes.fromhex(jv[2:]) != mv:
                d.add('content', 'bytes differ', jv, mv)
        elif jk == 'content':
            if not isinstance(mv, str) or jv != mv:
                d.add('content', 'text content must be the same str', jv, mv)
        elif jk == 'ts':
            # docs/output-plugin.md: ISO 8601 UTC string in JSON, timestamp extension in msgpack
            if not isinstance(mv, msgpack.Timestamp):
                d.add('ts', 'msgpack ts must be a timestamp extension', jv, mv)
            else:
                want = datetime.datetime.strptime(jv, '%Y-%m-%dT%H:%M:%S.%f+00:00').replace(
                    tzinfo=datetime.timezone.utc)
                if mv.to_datetime() != want or mv.nanoseconds % 1000 != 0:
                    d.add('ts', 'instants differ', jv, mv)
        else:
            cmp_plain(jv, mv, jk, d)


def msgpack_wire_problems(raw, colkinds):
    """The wire type of real (float 32), double (float 64) and oid (uint)
    values, which the decoded python values do not show: every occurrence of
    the column name as a map key must be followed by such a value (or nil)."""
    allowed = {
        'f4': {0xca},
        'f8': {0xcb},
        'uint': set(range(0x00, 0x80)) | {0xcc, 0xcd, 0xce, 0xcf},
    }
    probs = []
    for col, kind in colkinds.items():
        if kind not in allowed:
            continue
        key = msgpack.packb(col)
        start = 0
        while True:
            i = raw.find(key, start)
            if i < 0:
                break
            j = i + len(key)
            if j < len(raw) and raw[j] != 0xc0 and raw[j] not in allowed[kind]:
                probs.append('%s (%s): value type byte 0x%02x' % (col, kind, raw[j]))
            start = j
    return probs


# --------------------------------------------------------------- the data

def big_text(seed, n):
    rnd = random.Random(seed)
    alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?éßø€中文😀'
    return ''.join(rnd.choice(alphabet) for _ in range(n))


BIG1 = big_text(1, 20000)
BIG2 = big_text(2, 16000)
BIG3 = big_text(3, 12000)

JSON_NESTED = r'''{"z": 1, "a": {"y": [1, 2.5, -0.0, 1.0, 1E2, 1e-320, 0.1, 1.5e300, 1e400],
	"x": {"deep": [[], {}, [null, true, false]]}},
 "dup": 1, "b": "é\u00e9\ud83d\ude00 \"q\" \\ \/ \t\u0001\u2028", "dup": [2, "two"],
 "big": 18446744073709551616, "big2": 9223372036854775808, "neg": -9223372036854775809,
 "max": 9223372036854775807, "min": -9223372036854775808, "u64": 18446744073709551615,
 "longer_key": "v", "k": 12345678901234567890123456789.5, "": "empty key"}'''

JSONB_NESTED = r'''{"z": 1, "a": {"y": [1, 2.5, -0.0, 1.0, 1E2, 0.1, 1.5e300, 3.14159265358979323846264338327950288],
 "x": {"deep": [[], {}, [null, true, false]]}}, "dup": 1, "dup": {"second": "wins"},
 "b": "é\u00e9\ud83d\ude00 \"q\" \\ \t\u0001\u2028", "big": 18446744073709551616,
 "big2": 9223372036854775808, "neg": -9223372036854775809, "max": 9223372036854775807,
 "min": -9223372036854775808, "longer_key": "v", "": "empty key"}'''

TEXT_NASTY = 'unicode é ß 中文 😀 \u2028 tab\there newline\nnext "quote" \'apos\' back\\slash \x01\x1f\x7f end'


def lit(s):
    return "'" + s.replace("'", "''") + "'"


def setup_sql():
    return r"""
CREATE EXTENSION rtsub;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ''quoted''');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN posint2 AS posint;
CREATE TYPE pair AS (a int, b text);
CREATE TABLE tbl (
  id int PRIMARY KEY,
  c_int2 smallint, c_int4 integer, c_int8 bigint, c_oid oid,
  c_dropped text,
  c_real real, c_double double precision, c_numeric numeric, c_bool boolean,
  c_json json, c_jsonb jsonb, c_bytea bytea, c_text text, c_varchar varchar(20),
  c_char char(5), c_uuid uuid, c_date date, c_ts timestamp, c_tstz timestamptz,
  c_interval interval, c_time time, c_int_arr int[], c_text_arr text[],
  c_range int4range, c_inet inet, c_cidr cidr, c_mac macaddr, c_point point,
  c_varbit bit varying, c_money money, c_xml xml, c_tsv tsvector, c_enum mood,
  c_dom posint, c_dom2 posint2, c_comp pair,
  c_gen bigint GENERATED ALWAYS AS (c_int4::bigint * 2) STORED,
  c_big text
);
ALTER TABLE tbl DROP COLUMN c_dropped;
CREATE TABLE tbl2 (id int PRIMARY KEY, v2_int int, v2_float float8, v2_json jsonb,
                   v2_bytea bytea, v2_big text);
CREATE TABLE nul_tbl (id int PRIMARY KEY, j json);
SELECT rtsub.publish('tbl');
SELECT rtsub.publish('tbl2', replica_identity_full => true);
SELECT rtsub.publish('nul_tbl');
"""


FULL_COLS = ('id, c_int2, c_int4, c_int8, c_oid, c_real, c_double, c_numeric, c_bool, c_json, '
             'c_jsonb, c_bytea, c_text, c_varchar, c_char, c_uuid, c_date, c_ts, c_tstz, '
             'c_interval, c_time, c_int_arr, c_text_arr, c_range, c_inet, c_cidr, c_mac, '
             'c_point, c_varbit, c_money, c_xml, c_tsv, c_enum, c_dom, c_dom2, c_comp, c_big')


def changes_sql():
    """One string per transaction (each run as its own psql call)."""
    row1 = ', '.join([
        '1', '-32768', '2147483647', '-9223372036854775808', '4294967295',
        "'3.4028235e38'", "'1e-300'",
        "'123456789012345678901234567890.123456789012345678901234567890'", 'true',
        lit(JSON_NESTED), lit(JSONB_NESTED), "'\\x00010200ff80'::bytea", lit(TEXT_NASTY),
        "'héllo wörld'", "'ab'", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'2024-02-29'",
        "'2024-02-29 12:34:56.789012'", "'2024-02-29 12:34:56.789012+05:30'",
        "'1 year 2 mons 3 days 04:05:06.789'", "'23:59:59.999999'", "'{1,NULL,-3}'",
        "ARRAY['a\"b', NULL, 'c,d', '', 'NULL', 'back\\slash', 'x y', '{}']",
        "'[1,10)'", "'192.168.0.1/24'", "'10.0.0.0/8'", "'08:00:2b:01:02:03'",
        "'(1.5,-2)'", "B'10101'", "'12.34'", "'<a b=\"c\">t&amp;&lt;</a>'",
        "'a fat cat sat on a mat'", "'happy ''quoted'''", '42', '7', "ROW(1, 'x \"y\", z')",
        lit(BIG1)])
    row2 = ', '.join([
        '2', '32767', '-2147483648', '9223372036854775807', '0',
        "'Infinity'", "'NaN'", "'NaN'", 'false',
        lit('"just a string"'), lit('null'), "''::bytea", "''",
        "''", "''", "'00000000-0000-0000-0000-000000000000'", "'infinity'",
        "'-infinity'", "'infinity'", "'-178000000 years'", "'00:00:00'", "'{}'",
        "'{}'", "'empty'", "'::1'", "'::/0'", "'ff:ff:ff:ff:ff:ff'",
        "'(0,0)'", "B''", "'-92233720368547758.08'", "''", "''", "'sad'", '1', '1',
        "ROW(NULL, NULL)", "'short'"])
    rows_float = []
    floats = [
        ("'-Infinity'", "'Infinity'", "'Infinity'"),
        ("'-0'", "'-0'", "'-Infinity'"),
        ("'0.1'", "'0.1'", "'-0.000'"),
        ("'1.4e-45'", "'4.9e-324'", "'1' || repeat('0', 1000)"),
        ("'-3.4028235e38'", "'1.7976931348623157e308'", "'0.' || repeat('0', 200) || '1'"),
        ("'1e-40'", "'-1e-300'", "'1e-1000'"),
        ("'123456.79'", "'2.2250738585072014e-308'", "'3.14159265358979323846264338327950288419716939937510'"),
        ("'16777217'", "'9007199254740993'", "'-0.5'"),
        ("'0'", "'0'", "'0'"),
        ("'1'", "'-1'", "'1.000'"),
    ]
    for i, (r, dbl, num) in enumerate(floats):
        rows_float.append('(%d, %s, %s, (%s)::numeric)' % (100 + i, r, dbl, num))
    json_scalars = ['1', '-1', '0.5', '[1, "a", null, true]', '18446744073709551616', '{}',
                    '"\\u00e9\\n"', '1e400', '[{"b": 1, "a": 2, "aa": 3}]', '-0']
    rows_json = ['(%d, %s, %s)' % (200 + i, lit(j), lit(j)) for i, j in enumerate(json_scalars)]

    txs = [
        'INSERT INTO tbl (%s) VALUES (%s);' % (FULL_COLS, row1),
        'INSERT INTO tbl (%s) VALUES (%s);' % (FULL_COLS, row2),
        # empty string vs NULL, all NULL
        "INSERT INTO tbl (id, c_text, c_varchar) VALUES (3, '', NULL);",
        'INSERT INTO tbl (id, c_real, c_double, c_numeric) VALUES %s;' % ', '.join(rows_float),
        'INSERT INTO tbl (id, c_json, c_jsonb) VALUES %s;' % ', '.join(rows_json),
        # several changes and messages in one transaction
        "BEGIN;\n"
        "INSERT INTO tbl (id, c_int4, c_text, c_big) VALUES (4, 4, 'four', %s);\n"
        "SELECT pg_logical_emit_message(true, 'rtsub', %s);\n"
        "UPDATE tbl SET c_text = 'four!' WHERE id = 4;\n"
        "SELECT pg_logical_emit_message(true, 'rtsub:bin', '\\xff00fe80'::bytea);\n"
        "SELECT pg_logical_emit_message(true, 'rtsub:utf8', convert_to('hello é', 'UTF8'));\n"
        "SELECT pg_logical_emit_message(true, 'rtsub', '');\n"
        "SELECT pg_logical_emit_message(false, 'rtsub', 'non-transactional: not emitted');\n"
        "SELECT pg_logical_emit_message(true, 'other', 'other prefix: not emitted');\n"
        "COMMIT;" % (lit(BIG3), lit('text message é 😀 "q" \\ \n newline')),
        # TOAST value not changed, default replica identity -> unchanged
        'UPDATE tbl SET c_int4 = 5, c_real = 2.5 WHERE id = 1;',
        # key change
        'UPDATE tbl SET id = 20 WHERE id = 2;',
        # TOAST value changed
        'UPDATE tbl SET c_big = %s WHERE id = 1;' % lit(BIG2),
        'DELETE FROM tbl WHERE id = 3;',
        # nothing to emit (unpublished table would need another table: a no-op update)
        'UPDATE tbl SET c_int4 = c_int4 WHERE id = -1;',
        # REPLICA IDENTITY FULL table
        "INSERT INTO tbl2 VALUES (1, 1, 'NaN', '{\"k\": [1, 2.5]}', '\\x00'::bytea, %s);" % lit(BIG1),
        "INSERT INTO tbl2 VALUES (2, 2, -0.0, NULL, ''::bytea, 'small');",
        'UPDATE tbl2 SET v2_int = 10, v2_float = 1e-300 WHERE id = 1;',
        'UPDATE tbl2 SET id = 3 WHERE id = 1;',
        'DELETE FROM tbl2 WHERE id = 3;',
        'DELETE FROM tbl WHERE id = 4;',
        'TRUNCATE tbl, tbl2 RESTART IDENTITY CASCADE;',
    ]
    return txs


# --------------------------------------------------------------- reading

def opts_sql(opts):
    flat = []
    for k, v in opts:
        flat += [k, v]
    return 'VARIADIC ARRAY[%s]::text[]' % ', '.join(lit(x) for x in flat)


def peek_json(db, slot, opts):
    rows = db.query("SELECT %s FROM pg_logical_slot_peek_changes(%s, NULL, NULL, %s)"
                    % (b64_field("convert_to(data, 'UTF8')"), lit(slot),
                       opts_sql([('format', 'json')] + opts)))
    return [b64decode(r[0]) for r in rows]


def peek_msgpack(db, slot, opts):
    rows = db.query("SELECT %s FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, %s)"
                    % (b64_field('data'), lit(slot), opts_sql([('format', 'msgpack')] + opts)))
    return [b64decode(r[0]) for r in rows]


def table_columns(db):
    """{(schema, table): {column: kind}} in column order."""
    types = {}
    for oid, typtype, base, name in db.query(
            'SELECT oid, typtype, typbasetype, typname FROM pg_type'):
        types[oid] = (typtype, base, name)
    kinds = {'int2': 'int', 'int4': 'int', 'int8': 'int', 'oid': 'uint',
             'float4': 'f4', 'float8': 'f8', 'bool': 'bool', 'json': 'json',
             'jsonb': 'json', 'bytea': 'bytea'}
    out = {}
    for nsp, rel, att, typ in db.query(
            "SELECT n.nspname, c.relname, a.attname, a.atttypid FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY c.relname, a.attnum"):
        while types[typ][0] == 'd':
            typ = types[typ][1]
        out.setdefault((nsp, rel), {})[att] = kinds.get(types[typ][2], 'str')
    return out


def split_recvlogical(buf):
    """Records of a pg_recvlogical msgpack file: each a map followed by 0x0a.
    Returns (list of raw records, problem or None)."""
    recs = []
    pos = 0
    while pos < len(buf):
        if buf[pos] not in MAP_START:
            return recs, 'byte 0x%02x at offset %d does not start a map' % (buf[pos], pos)
        u = new_unpacker()
        u.feed(buf[pos:])
        try:
            u.unpack()
        except msgpack.OutOfData:
            return recs, 'incomplete record at offset %d' % pos
        end = pos + u.tell()
        recs.append(buf[pos:end])
        if end >= len(buf) or buf[end] != 0x0a:
            return recs, 'record at offset %d is not followed by a 0x0a byte' % pos
        pos = end + 1
    return recs, None


# --------------------------------------------------------------- checks

def describe(jrec):
    try:
        d = dict(jrec)
        what = d.get('op', '?')
        if 'table' in d:
            what += ' ' + d['table']
        for part in ('new', 'key', 'old'):
            if part in d and isinstance(d[part], Obj):
                idv = dict(d[part]).get('id')
                if idv is not None:
                    what += ' id=%s' % idv
                    break
        if 'prefix' in d:
            what += ' ' + d['prefix']
        if 'lsn' in d:
            what += ' @%s' % d['lsn']
        if 'pos' in d:
            what += ' pos %s' % d['pos']
        return what
    except Exception:  # noqa: BLE001
        return '?'


def compare_variant(tap, db, name, opts, tables, colkinds_all):
    jraw = peek_json(db, SLOT_JSON, opts)
    mraw = peek_msgpack(db, SLOT_MP, opts)
    tap.ok(len(jraw) == len(mraw) and len(jraw) > 0,
           '%s: same number of records in both forms (%d JSON, %d msgpack)'
           % (name, len(jraw), len(mraw)))

    jrecs, bad = [], []
    for i, r in enumerate(jraw):
        try:
            text = r.decode('utf-8')
            if '\n' in text or '\r' in text:
                bad.append('record %d: raw newline in JSON record' % i)
            jrecs.append(load_json(text))
        except Exception as e:  # noqa: BLE001
            bad.append('record %d: %r; %s' % (i, e, short(r)))
            jrecs.append(None)
    tap.ok(not bad, '%s: every JSON record is one line of valid JSON' % name, bad)

    mrecs, bad = [], []
    for i, r in enumerate(mraw):
        obj, prob = load_msgpack(r)
        mrecs.append(obj)
        if prob:
            bad.append('record %d: %s; %s' % (i, prob, short(r, 120)))
    tap.ok(not bad, '%s: every msgpack record is exactly one complete map' % name, bad)

    wire = []
    for i, r in enumerate(mraw):
        for p in msgpack_wire_problems(r, colkinds_all):
            wire.append('record %d: %s' % (i, p))
    tap.ok(not wire, '%s: real is float 32, double float 64, oid uint on the wire' % name, wire)

    jsonkeys = []
    for i in range(max(len(jrecs), len(mrecs))):
        jrec = jrecs[i] if i < len(jrecs) else None
        mrec = mrecs[i] if i < len(mrecs) else None
        d = Diffs()
        if jrec is None or mrec is None:
            d.add('record', 'missing or undecodable in one form', jrec, mrec)
        else:
            cmp_record(jrec, mrec, tables, d)
        tap.ok(not d.value, '%s: record %d (%s) is the same in JSON and msgpack'
               % (name, i, describe(jrec if jrec is not None else mrec)), d.value)
        jsonkeys += ['record %d (%s) %s' % (i, describe(jrec), x) for x in d.jsonkeys]
    tap.ok(not jsonkeys, '%s: json/jsonb values keep their object key order and duplicate keys '
           'in msgpack' % name, jsonkeys)
    return jrecs, mrecs, mraw


def doc_checks(tap, jrecs, mrecs):
    """A few statements of the doc about the content, on the default variant."""
    def find(recs, op, table, rid, part='new'):
        out = []
        for r in recs:
            d = dict(r)
            if d.get('op') == op and d.get('table') == table:
                row = dict(d.get(part) or d.get('key') or d.get('old') or [])
                if row.get('id') in (rid, Decimal(rid)):
                    out.append(d)
        return out

    for form, recs in (('JSON', jrecs), ('msgpack', mrecs)):
        ins = find(recs, 'I', 'tbl', 1)
        ok = len(ins) == 1 and dict(ins[0]['new']).get('c_big') == BIG1
        tap.ok(ok, '%s: the large TOASTed value is sent whole on insert' % form,
               ['records: %s' % short(ins, 300)])
        upd = [r for r in find(recs, 'U', 'tbl', 1) if 'c_big' not in dict(r['new'])]
        ok = (len(upd) == 1 and upd[0].get('unchanged') == ['c_big']
              and list(upd[0])[-1] == 'unchanged' and 'key' not in upd[0])
        tap.ok(ok, '%s: UPDATE keeping a TOASTed value (default identity) lists it in unchanged'
               % form, ['records: %s' % short(upd, 300)])
        upd2 = [r for r in find(recs, 'U', 'tbl', 1) if 'c_big' in dict(r['new'])]
        ok = len(upd2) == 1 and dict(upd2[0]['new'])['c_big'] == BIG2 and 'unchanged' not in upd2[0]
        tap.ok(ok, '%s: UPDATE changing the TOASTed value sends the new value' % form,
               ['records: %s' % short(upd2, 300)])
        full = find(recs, 'U', 'tbl2', 1)
        ok = (len(full) == 1 and 'unchanged' not in full[0]
              and dict(full[0]['new']).get('v2_big') == BIG1
              and dict(full[0].get('old') or []).get('v2_big') == BIG1)
        tap.ok(ok, '%s: REPLICA IDENTITY FULL: unchanged TOASTed value filled from the old row'
               % form, ['records: %s' % short(full, 300)])
        keych = find(recs, 'U', 'tbl', 20)
        ok = len(keych) == 1 and [k for k, _ in keych[0].get('key', [])] == ['id'] \
            and dict(keych[0]['key'])['id'] == 2
        tap.ok(ok, '%s: key change carries the old key in key' % form,
               ['records: %s' % short(keych, 300)])
        trunc = [dict(r) for r in recs if dict(r).get('op') == 'T']
        ok = (sorted(t.get('table') for t in trunc) == ['tbl', 'tbl2']
              and all(t.get('cascade') is True and t.get('restart_identity') is True for t in trunc)
              and len({t.get('lsn') for t in trunc}) == 1)
        tap.ok(ok, '%s: TRUNCATE of two tables gives two T records with flags' % form,
               ['records: %s' % short(trunc, 300)])
        msgs = [dict(r) for r in recs if dict(r).get('op') == 'M']
        prefixes = [m.get('prefix') for m in msgs]
        tap.is_eq(prefixes, ['rtsub', 'rtsub:bin', 'rtsub:utf8', 'rtsub'],
                  '%s: only transactional rtsub messages are emitted, in order' % form)


def recvlogical_check(tap, db, tables, tmpdir):
    ref_raw = peek_msgpack(db, SLOT_RECV, [])
    endpos = db.scalar('SELECT pg_current_wal_lsn()')
    out = os.path.join(tmpdir, 'recv.msgpack')
    cmd = ['pg_recvlogical', '-d', DB, '--slot', SLOT_RECV, '--start', '--no-loop',
           '--endpos', endpos, '-f', out, '-o', 'format=msgpack']
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        rc, err = p.returncode, p.stderr.decode('utf-8', 'replace')
    except subprocess.TimeoutExpired:
        rc, err = -1, 'timed out after 120 s'
    tap.ok(rc == 0, 'pg_recvlogical -o format=msgpack --endpos %s exits 0' % endpos,
           ['rc %s, stderr: %s' % (rc, err.strip())])
    buf = b''
    if os.path.exists(out):
        with open(out, 'rb') as f:
            buf = f.read()
    recs, prob = split_recvlogical(buf)
    tap.ok(prob is None and len(recs) > 0,
           'pg_recvlogical output is %d msgpack maps, each followed by 0x0a' % len(recs),
           [str(prob), 'file: %d bytes' % len(buf)])
    tap.ok(len(recs) == len(ref_raw),
           'pg_recvlogical gives as many records as peek_binary_changes (%d vs %d)'
           % (len(recs), len(ref_raw)))
    diffs = []
    for i, (a, b) in enumerate(zip(recs, ref_raw)):
        if a != b:
            oa, _ = load_msgpack(a)
            ob, _ = load_msgpack(b)
            diffs.append('record %d differs: recvlogical %s vs peek %s' % (i, short(oa, 300), short(ob, 300)))
    tap.ok(not diffs and len(recs) == len(ref_raw),
           'pg_recvlogical records are byte-identical to pg_logical_slot_peek_binary_changes', diffs)
    dec = []
    for i, r in enumerate(recs):
        obj, prob = load_msgpack(r)
        if prob or obj is None or dict(obj).get('op') is None:
            dec.append('record %d: %s' % (i, prob))
        elif lsn_to_int(dict(obj)['lsn']) > lsn_to_int(endpos):
            dec.append('record %d: lsn %s after endpos %s' % (i, dict(obj)['lsn'], endpos))
    tap.ok(not dec, 'pg_recvlogical records decode (msgpack.Unpacker) with lsn <= endpos', dec)


JSON_INPUT_CASES = [
    # (description, json column text): valid `json` values that `jsonb` does not accept
    ('a \\u0000 escape', '{"s": "a\\u0000b", "t": "\\u0000"}'),
    ('a number beyond the numeric range', '{"n": 1e200000}'),
]


def json_input_check(tap, db, tables):
    """Valid `json` column values that jsonb would reject: both forms must
    still decode.  Each case runs last, on its own short-lived slot, because a
    record that cannot be decoded blocks its slot."""
    for i, (what, value) in enumerate(JSON_INPUT_CASES):
        db.execute("SELECT 1 FROM pg_create_logical_replication_slot(%s, 'rtsub');" % lit(SLOT_NUL))
        try:
            db.execute("INSERT INTO nul_tbl VALUES (%d, %s);" % (i + 1, lit(value)))
            res = {}
            for form, fn in (('JSON', peek_json), ('msgpack', peek_msgpack)):
                try:
                    res[form] = (fn(db, SLOT_NUL, []), None)
                except Exception as e:  # noqa: BLE001
                    res[form] = (None, str(e).strip())
            for form in ('JSON', 'msgpack'):
                recs, err = res[form]
                tap.ok(err is None and recs is not None and len(recs) == 1,
                       '%s: a json column value with %s can be decoded' % (form, what),
                       ['json value: %s' % value] +
                       (['error: %s' % err] if err else ['records: %r' % (recs,)]))
            desc = 'json column value with %s: same in JSON and msgpack' % what
            if all(res[f][0] and len(res[f][0]) == 1 for f in res):
                jrec = load_json(res['JSON'][0][0].decode('utf-8'))
                mrec, prob = load_msgpack(res['msgpack'][0][0])
                d = Diffs()
                if prob:
                    d.add('record', prob, values=False)
                elif '\\u0000' in value:
                    # documented: json text the parser cannot de-escape is a str of its JSON text
                    mv = dict(dict(mrec)['new'])['j']
                    if mv != value:
                        d.add('new.j', 'must be a str holding the JSON text', value, mv)
                else:
                    cmp_record(jrec, mrec, tables, d)
                tap.ok(not d.value and not d.jsonkeys, desc, d.value + d.jsonkeys)
            else:
                tap.ok(False, desc, ['not decodable in both forms (see above)'])
        finally:
            db.execute("SELECT pg_drop_replication_slot(%s);" % lit(SLOT_NUL))


def drop_slots(admin):
    admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                  "WHERE slot_name IN (%s) OR database = %s;"
                  % (', '.join(lit(s) for s in ALL_SLOTS), lit(DB)))


def main():
    tap = Tap()
    admin = Psql()
    db = Psql(DB)
    tmpdir = tempfile.mkdtemp(prefix='rtsub_mpj_')
    keep = os.environ.get('RTSUB_KEEP_DB')
    try:
        drop_slots(admin)
        admin.recreate_database(DB)
        db.execute(setup_sql())
        for s in (SLOT_JSON, SLOT_MP, SLOT_RECV):
            db.execute("SELECT 1 FROM pg_create_logical_replication_slot(%s, 'rtsub');" % lit(s))
        big_out = None
        for i, tx in enumerate(changes_sql()):
            db.execute(tx)
            if i == 0:
                big_out = db.scalar("SELECT pg_column_size(c_big) > 10000 AND "
                                    "pg_column_compression(c_big) IS NULL FROM tbl WHERE id = 1")
        tables = table_columns(db)
        tap.ok(('public', 'tbl') in tables and 'c_dropped' not in tables[('public', 'tbl')]
               and tables[('public', 'tbl')].get('c_dom2') == 'int',
               'column types read from pg_attribute (domains resolved)', [short(tables, 400)])
        tap.is_eq(big_out, 't', 'c_big is a large uncompressed (incompressible) TOASTed value')
        colkinds_all = {}
        for cols in tables.values():
            colkinds_all.update(cols)

        variants = [
            ('default', []),
            ('include_transaction+old_row=key', [('include_transaction', 'true'), ('old_row', 'key')]),
            ('include_transaction+old_row=none', [('include_transaction', 'on'), ('old_row', 'none')]),
            ('no lsn/xid/ts/messages', [('include_lsn', 'false'), ('include_xid', 'off'),
                                        ('include_timestamp', '0'), ('include_messages', 'false'),
                                        ('old_row', 'auto')]),
        ]
        for name, opts in variants:
            try:
                jrecs, mrecs, _ = compare_variant(tap, db, name, opts, tables, colkinds_all)
                if name == 'default':
                    doc_checks(tap, [r for r in jrecs if r is not None],
                               [r for r in mrecs if r is not None])
            except Exception:  # noqa: BLE001
                tap.fail_exception('%s: comparison ran without error' % name)

        try:
            recvlogical_check(tap, db, tables, tmpdir)
        except Exception:  # noqa: BLE001
            tap.fail_exception('pg_recvlogical check ran without error')
        try:
            json_input_check(tap, db, tables)
        except Exception:  # noqa: BLE001
            tap.fail_exception('json input checks ran without error')
    except Exception:  # noqa: BLE001
        tap.fail_exception('test setup')
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if not keep:
            try:
                drop_slots(admin)
                admin.drop_database(DB)
            except Exception:  # noqa: BLE001
                traceback.print_exc(file=sys.stdout)
    return tap.done()


if __name__ == '__main__':
    sys.exit(main())
