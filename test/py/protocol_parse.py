#!/usr/bin/python3
"""protocol_parse — the client protocol's message parser and server message
builders (src/protocol.c, docs/protocol.md), through the SQL test functions
rtsub.parse_client_message(bytea, text) and rtsub._test_server_messages(text).

Every client message type is parsed in JSON and MessagePack (python3-msgpack
encodes), every error path is checked for its code (invalid JSON, truncated
MessagePack, trailing bytes, non-object, missing / unknown type, wrong field
types, out-of-range numbers, over-long id and token, deep nesting, NUL bytes,
invalid UTF-8, duplicate keys, bin / ext / non-string keys in params), then
3,000 random and mutated inputs per format are fed in batches: the backend
must never crash (SELECT 1 after every batch) and every call returns either
a well-formed message or one of the documented error codes.  Server
messages are decoded in both formats and compared with what they should be.

Run by test/run (py suite) with /usr/bin/python3; prints TAP.
"""

import json
import math
import os
import random
import string
import sys
import time
import traceback

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rtsub_testlib import Psql, PsqlError, Tap  # noqa: E402

DB = 'rtsub_protocol_test'
ERRORS = {'bad_message', 'unknown_type', 'bad_field'}
TYPES = {'subscribe', 'unsubscribe', 'ping', 'refresh', 'auth'}
FUZZ_N = 3000
BATCH = 250
SEED = int(os.environ.get('RTSUB_FUZZ_SEED', '0')) or random.randrange(1, 1 << 30)

# created by hand when the extension script does not define them (yet)
FUNCTIONS_SQL = {
    'rtsub.parse_client_message(bytea,text)': r"""
CREATE FUNCTION rtsub.parse_client_message(message pg_catalog.bytea,
	format pg_catalog.text DEFAULT 'json')
RETURNS pg_catalog.jsonb
AS '$libdir/rtsub', 'rtsub_parse_client_message_sql'
LANGUAGE C STRICT;
REVOKE ALL ON FUNCTION rtsub.parse_client_message(pg_catalog.bytea, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rtsub.parse_client_message(pg_catalog.bytea, pg_catalog.text) TO rtsub_admin;
""",
    'rtsub._test_server_messages(text)': r"""
CREATE FUNCTION rtsub._test_server_messages(format pg_catalog.text)
RETURNS SETOF pg_catalog.bytea
AS '$libdir/rtsub', 'rtsub_test_server_messages'
LANGUAGE C STRICT;
REVOKE ALL ON FUNCTION rtsub._test_server_messages(pg_catalog.text) FROM PUBLIC;
""",
}


def hexlit(b):
    return "'\\x%s'::bytea" % b.hex()


class Parser:
    """Runs rtsub.parse_client_message on many inputs per psql call."""

    def __init__(self, db):
        self.db = db

    def many(self, items):
        """items: [(bytes, fmt)] -> [dict]; raises PsqlError if the backend fails."""
        if not items:
            return []
        values = ',\n'.join('(%d, %s, %s)' % (i, hexlit(b), "'%s'" % f)
                            for i, (b, f) in enumerate(items))
        rows = self.db.query(
            'SELECT i, rtsub.parse_client_message(m, f)::text FROM (VALUES %s) v(i, m, f) '
            'ORDER BY i' % values)
        out = [None] * len(items)
        for i, j in rows:
            out[int(i)] = json.loads(j)
        return out

    def one(self, b, fmt):
        return self.many([(b, fmt)])[0]


# ------------------------------------------------------------ encodings

def enc(obj, fmt, **kw):
    if fmt == 'json':
        return json.dumps(obj, separators=(',', ':'), **kw).encode('utf-8')
    return msgpack.packb(obj, use_bin_type=True, **kw)


def mp_str(b):
    """a MessagePack str header + raw bytes (which may be invalid UTF-8)."""
    n = len(b)
    if n < 32:
        return bytes([0xa0 | n]) + b
    if n < 256:
        return b'\xd9' + bytes([n]) + b
    return b'\xda' + n.to_bytes(2, 'big') + b


def mp_map(pairs):
    """a MessagePack map from already-encoded (key, value) pairs."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b'\xde' + n.to_bytes(2, 'big')
    return head + b''.join(k + v for k, v in pairs)


def mp_s(s):
    return msgpack.packb(s, use_bin_type=True)


def nested_json(depth, leaf='1'):
    return '[' * depth + leaf + ']' * depth


def nested_mp(depth):
    return b'\x91' * depth + b'\x01'


# ------------------------------------------------------------ checks

def check_cases(tap, parser):
    full = {'type': 'subscribe', 'id': 'sub-1', 'subscription': 'orders',
            'params': {'b': [1, 2.5, 'x', None, False], 'a': {'z': None, 'y': True},
                       'é': 'ü\n"'},
            'snapshot': True, 'resume': {'epoch': 'e1', 'after': '0/1A2B3C8:3', 'x': 1},
            'batchSize': 100, 'throttleMs': 250, 'includeMetadata': True, 'priority': 9,
            'future': {'ignored': [1]}}
    full_expect = {'type': 'subscribe', 'id': 'sub-1', 'subscription': 'orders',
                   'params_json': '{"a":{"y":true,"z":null},"b":[1,2.5,"x",null,false],"é":"ü\\n\\""}',
                   'snapshot': True, 'resume_epoch': 'e1', 'resume_after': '0/1A2B3C8:3',
                   'batch_size': 100, 'throttle_ms': 250, 'include_metadata': True,
                   'priority': 9, 'nonce': None, 'token': None}
    minimal = {'type': 'subscribe', 'id': 'x', 'subscription': 's'}
    minimal_expect = {'type': 'subscribe', 'id': 'x', 'subscription': 's', 'params_json': None,
                      'snapshot': False, 'resume_epoch': None, 'resume_after': None,
                      'batch_size': 1, 'throttle_ms': 0, 'include_metadata': False,
                      'priority': 5, 'nonce': None, 'token': None}
    tok = 'eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYXBwIn0.c2ln'
    ok_cases = [
        ('subscribe, all fields', full, full_expect),
        ('subscribe, defaults', minimal, minimal_expect),
        ('subscribe, null optionals', dict(minimal, params=None, snapshot=None, resume=None,
                                           batchSize=None, priority=None), minimal_expect),
        ('subscribe, empty params', dict(minimal, params={}), {'params_json': '{}'}),
        ('subscribe, range edges high', dict(minimal, batchSize=1000, throttleMs=10000, priority=9),
         {'batch_size': 1000, 'throttle_ms': 10000, 'priority': 9}),
        ('subscribe, range edges low', dict(minimal, batchSize=1, throttleMs=0, priority=0),
         {'batch_size': 1, 'throttle_ms': 0, 'priority': 0}),
        ('subscribe, integral float batchSize', dict(minimal, batchSize=10.0), {'batch_size': 10}),
        ('subscribe, 64-byte printable id', dict(minimal, id='~' + 'a' * 62 + ' '),
         {'id': '~' + 'a' * 62 + ' '}),
        ('subscribe, 128-byte subscription', dict(minimal, subscription='s' * 128),
         {'subscription': 's' * 128}),
        ('subscribe, unicode subscription', dict(minimal, subscription='bestellungen_ü'),
         {'subscription': 'bestellungen_ü'}),
        ('subscribe, params nested 30 deep (32 in all)',
         dict(minimal, params={'a': json.loads(nested_json(29))}),
         {'params_json': '{"a":%s}' % nested_json(29)}),
        ('unsubscribe', {'type': 'unsubscribe', 'id': 'sub-1', 'token': 5},
         {'type': 'unsubscribe', 'id': 'sub-1', 'token': None}),
        ('ping without nonce', {'type': 'ping'}, {'type': 'ping', 'nonce': None}),
        ('ping, string nonce', {'type': 'ping', 'nonce': 'abc "é"\n'},
         {'nonce': '"abc \\"é\\"\\n"'}),
        ('ping, integer nonce', {'type': 'ping', 'nonce': -42}, {'nonce': '-42'}),
        ('ping, big integer nonce', {'type': 'ping', 'nonce': 2 ** 64 - 1},
         {'nonce': '18446744073709551615'}),
        ('ping, float nonce', {'type': 'ping', 'nonce': 0.25}, {'nonce': '0.25'}),
        ('ping, boolean nonce', {'type': 'ping', 'nonce': True}, {'nonce': 'true'}),
        ('ping, null nonce', {'type': 'ping', 'nonce': None}, {'nonce': 'null'}),
        ('refresh', {'type': 'refresh', 'token': tok}, {'type': 'refresh', 'token': tok}),
        ('auth', {'type': 'auth', 'token': tok}, {'type': 'auth', 'token': tok}),
        ('auth, 16 kB token', {'type': 'auth', 'token': 't' * 16384}, {'token': 't' * 16384}),
    ]
    items, meta = [], []
    for name, obj, expect in ok_cases:
        for fmt in ('json', 'msgpack'):
            items.append((enc(obj, fmt), fmt))
            meta.append(('%s (%s)' % (name, fmt), expect))
    # JSON-only spellings
    for name, text, expect in [
        ('JSON escapes and whitespace',
         ' {\n"type" : "subscribe", "id":"\\u0041b", "subscription":"\\ud83d\\ude00",'
         ' "params": {"k":"\\u00e9\\t"}}\t', {'id': 'Ab', 'subscription': '😀',
                                            'params_json': '{"k":"é\\t"}'}),
        ('JSON exponent batchSize', '{"type":"subscribe","id":"a","subscription":"s","batchSize":1e2}',
         {'batch_size': 100}),
        ('JSON numbers in params kept as written',
         '{"type":"subscribe","id":"a","subscription":"s","params":{"n":1.50e+3,"m":-0}}',
         {'params_json': '{"m":-0,"n":1.50e+3}'}),
        ('JSON nonce number kept as written', '{"type":"ping","nonce":1.0E2}', {'nonce': '1.0E2'}),
    ]:
        items.append((text.encode('utf-8'), 'json'))
        meta.append((name, expect))
    # MessagePack-only values
    for name, obj, kw, expect in [
        ('msgpack float32 in params', dict(minimal, params={'f': 0.1}), {'use_single_float': True},
         {'params_json': '{"f":0.1}'}),
        ('msgpack big ints in params', dict(minimal, params={'u': 2 ** 64 - 1, 'i': -2 ** 63}), {},
         {'params_json': '{"i":-9223372036854775808,"u":18446744073709551615}'}),
        ('msgpack str8/16 lengths', dict(minimal, params={'s': 'x' * 300}), {},
         {'params_json': '{"s":"%s"}' % ('x' * 300)}),
    ]:
        items.append((enc(obj, 'msgpack', **kw), 'msgpack'))
        meta.append((name, expect))

    results = parser.many(items)
    for (name, expect), got in zip(meta, results):
        sub = {k: got.get(k, '<absent>') for k in expect}
        tap.ok(sub == expect and 'error' not in got, 'parses: %s' % name,
               ['     got: %r' % (got,), 'expected: %r' % (expect,)])

    # the same message gives the same struct in both formats
    same = parser.many([(enc(full, 'json'), 'json'), (enc(full, 'msgpack'), 'msgpack')])
    tap.is_eq(same[0], same[1], 'JSON and MessagePack parse to the same message')


def error_cases():
    """(name, bytes, fmt, code, detail substring or None)"""
    sub = {'type': 'subscribe', 'id': 'a', 'subscription': 's'}
    c = []

    def both(name, obj, code, detail=None):
        for fmt in ('json', 'msgpack'):
            c.append(('%s (%s)' % (name, fmt), enc(obj, fmt), fmt, code, detail))

    # not a message
    for name, text in [('empty', b''), ('whitespace', b'  \n'), ('truncated', b'{"type":'),
                       ('bare key', b'{type:"ping"}'), ('single quotes', b"{'type':'ping'}"),
                       ('trailing comma', b'{"type":"ping",}'), ('NaN', b'{"type":"ping","nonce":NaN}'),
                       ('trailing bytes', b'{"type":"ping"} x'), ('two objects', b'{"type":"ping"}{}'),
                       ('array', b'[{"type":"ping"}]'), ('string', b'"ping"'), ('number', b'42'),
                       ('null', b'null'), ('embedded NUL', b'{"type":"pi\x00ng"}'),
                       ('trailing NUL', b'{"type":"ping"}\x00'),
                       ('\\u0000 escape', b'{"type":"ping","nonce":"a\\u0000"}'),
                       ('lone surrogate escape', b'{"type":"ping","nonce":"\\ud800"}'),
                       ('invalid UTF-8', b'{"type":"ping","nonce":"\xff"}'),
                       ('overlong UTF-8', b'{"type":"ping","nonce":"\xc0\xaf"}'),
                       ('UTF-8 surrogate', b'{"type":"ping","nonce":"\xed\xa0\x80"}'),
                       ('UTF-8 BOM', b'\xef\xbb\xbf{"type":"ping"}'),
                       ('control character in string', b'{"type":"ping","nonce":"a\x01"}'),
                       ('duplicate key', b'{"type":"ping","type":"ping"}'),
                       ('duplicate key, other values', b'{"type":"ping","nonce":1,"nonce":2}'),
                       ('deep nesting 1000', ('{"type":"subscribe","id":"a","subscription":"s",'
                                              '"params":{"a":%s}}' % nested_json(1000)).encode()),
                       ('deep nesting 100000', ('{"type":"ping","nonce":%s}' % nested_json(100000)).encode()),
                       ('unbalanced deep nesting', b'[' * 50000),
                       ('nesting 33', ('{"type":"subscribe","id":"a","subscription":"s",'
                                       '"params":{"a":%s}}' % nested_json(31)).encode())]:
        c.append(('JSON: %s' % name, text, 'json', 'bad_message', None))
    long_token = b'{"type":' + b'x' * 100000 + b'}'
    c.append(('JSON: long invalid token (detail clipped)', long_token, 'json', 'bad_message', None))

    ping = enc({'type': 'ping', 'nonce': 'n'}, 'msgpack')
    subm = enc(dict(sub, params={'k': [1, 2, 3]}), 'msgpack')
    for name, data in [('empty', b''), ('truncated by 1', ping[:-1]), ('header only', ping[:1]),
                       ('truncated nested', subm[:-2]), ('trailing byte', ping + b'\xc0'),
                       ('two objects', ping + ping), ('array', msgpack.packb([{'type': 'ping'}])),
                       ('str', msgpack.packb('ping')), ('int', b'\x05'), ('nil', b'\xc0'),
                       ('reserved 0xc1', b'\x81' + mp_s('type') + b'\xc1'),
                       ('map32 claiming 2^32-1 pairs', b'\xdf\xff\xff\xff\xff' + mp_s('type') + mp_s('ping')),
                       ('array32 claiming 2^32-1 items in params',
                        mp_map([(mp_s('type'), mp_s('subscribe')), (mp_s('id'), mp_s('a')),
                                (mp_s('subscription'), mp_s('s')),
                                (mp_s('params'), b'\x81' + mp_s('a') + b'\xdd\xff\xff\xff\xff\x01')])),
                       ('str32 claiming 4 GB', b'\x81' + mp_s('type') + b'\xdb\xff\xff\xff\xff' + b'ping'),
                       ('bin32 claiming 4 GB', b'\x81' + mp_s('type') + b'\xc6\xff\xff\xff\xff'),
                       ('ext32 claiming 4 GB', b'\x81' + mp_s('type') + b'\xc9\xff\xff\xff\xff\x01'),
                       ('non-string top-level key', b'\x82' + mp_s('type') + mp_s('ping') + b'\x01\x02'),
                       ('duplicate key', mp_map([(mp_s('type'), mp_s('ping'))] * 2)),
                       ('duplicate key, other values', mp_map([(mp_s('type'), mp_s('ping')),
                                                               (mp_s('nonce'), b'\x01'),
                                                               (mp_s('nonce'), b'\x02')])),
                       ('invalid UTF-8 str', mp_map([(mp_s('type'), mp_s('ping')),
                                                     (mp_s('nonce'), mp_str(b'\xff'))])),
                       ('invalid UTF-8 key', mp_map([(mp_s('type'), mp_s('ping')),
                                                     (mp_str(b'\xc3'), mp_s('x'))])),
                       ('NUL in str', mp_map([(mp_s('type'), mp_s('ping')),
                                              (mp_s('nonce'), mp_str(b'a\x00b'))])),
                       ('deep nesting 1000', mp_map([(mp_s('type'), mp_s('subscribe')),
                                                     (mp_s('id'), mp_s('a')), (mp_s('subscription'), mp_s('s')),
                                                     (mp_s('params'), b'\x81' + mp_s('a') + nested_mp(1000))])),
                       ('nesting 33', mp_map([(mp_s('type'), mp_s('subscribe')),
                                              (mp_s('id'), mp_s('a')), (mp_s('subscription'), mp_s('s')),
                                              (mp_s('params'), b'\x81' + mp_s('a') + nested_mp(31))])),
                       ('deep empty arrays', b'\x91' * 40 + b'\x90')]:
        c.append(('msgpack: %s' % name, data, 'msgpack', 'bad_message', None))

    # fields
    both('missing type', {'id': 'a'}, 'bad_field', '"type"')
    both('type not a string', {'type': 1}, 'bad_field', '"type"')
    both('type null', {'type': None}, 'bad_field', '"type"')
    both('unknown type', {'type': 'subscribe_all'}, 'unknown_type', 'subscribe_all')
    both('empty type', {'type': ''}, 'unknown_type', None)
    both('type case differs', {'type': 'Ping'}, 'unknown_type', None)
    both('subscribe without id', {'type': 'subscribe', 'subscription': 's'}, 'bad_field', '"id"')
    both('subscribe without subscription', {'type': 'subscribe', 'id': 'a'}, 'bad_field', '"subscription"')
    both('id not a string', dict(sub, id=5), 'bad_field', '"id"')
    both('id empty', dict(sub, id=''), 'bad_field', '"id"')
    both('id 65 bytes', dict(sub, id='a' * 65), 'bad_field', '"id"')
    both('id with a tab', dict(sub, id='a\tb'), 'bad_field', '"id"')
    both('id with DEL', dict(sub, id='a\x7f'), 'bad_field', '"id"')
    both('id not ASCII', dict(sub, id='é'), 'bad_field', '"id"')
    both('subscription 129 bytes', dict(sub, subscription='s' * 129), 'bad_field', '"subscription"')
    both('subscription empty', dict(sub, subscription=''), 'bad_field', '"subscription"')
    both('subscription an array', dict(sub, subscription=['s']), 'bad_field', '"subscription"')
    both('params an array', dict(sub, params=[1]), 'bad_field', '"params"')
    both('params a string', dict(sub, params='{}'), 'bad_field', '"params"')
    both('snapshot a string', dict(sub, snapshot='yes'), 'bad_field', '"snapshot"')
    both('snapshot a number', dict(sub, snapshot=1), 'bad_field', '"snapshot"')
    both('includeMetadata a number', dict(sub, includeMetadata=1), 'bad_field', '"includeMetadata"')
    both('resume a string', dict(sub, resume='0/1:1'), 'bad_field', '"resume"')
    both('resume without after', dict(sub, resume={'epoch': 'e'}), 'bad_field', '"resume.after"')
    both('resume without epoch', dict(sub, resume={'after': '0/1:1'}), 'bad_field', '"resume.epoch"')
    both('resume.after a number', dict(sub, resume={'epoch': 'e', 'after': 1}), 'bad_field', '"resume.after"')
    both('resume.epoch too long', dict(sub, resume={'epoch': 'e' * 65, 'after': '0/1:1'}),
         'bad_field', '"resume.epoch"')
    both('batchSize a string', dict(sub, batchSize='10'), 'bad_field', '"batchSize"')
    both('batchSize 0', dict(sub, batchSize=0), 'bad_field', '"batchSize"')
    both('batchSize 1001', dict(sub, batchSize=1001), 'bad_field', '"batchSize"')
    both('batchSize 2^64-1', dict(sub, batchSize=2 ** 64 - 1), 'bad_field', '"batchSize"')
    both('batchSize -2^63', dict(sub, batchSize=-2 ** 63), 'bad_field', '"batchSize"')
    both('batchSize 1.5', dict(sub, batchSize=1.5), 'bad_field', '"batchSize"')
    both('batchSize true', dict(sub, batchSize=True), 'bad_field', '"batchSize"')
    both('throttleMs -1', dict(sub, throttleMs=-1), 'bad_field', '"throttleMs"')
    both('throttleMs 10001', dict(sub, throttleMs=10001), 'bad_field', '"throttleMs"')
    both('priority 10', dict(sub, priority=10), 'bad_field', '"priority"')
    both('priority -1', dict(sub, priority=-1), 'bad_field', '"priority"')
    both('priority an object', dict(sub, priority={}), 'bad_field', '"priority"')
    both('unsubscribe without id', {'type': 'unsubscribe'}, 'bad_field', '"id"')
    both('unsubscribe id 65 bytes', {'type': 'unsubscribe', 'id': 'x' * 65}, 'bad_field', '"id"')
    both('ping nonce an object', {'type': 'ping', 'nonce': {}}, 'bad_field', '"nonce"')
    both('ping nonce an array', {'type': 'ping', 'nonce': [1]}, 'bad_field', '"nonce"')
    both('refresh without token', {'type': 'refresh'}, 'bad_field', '"token"')
    both('refresh token a number', {'type': 'refresh', 'token': 1}, 'bad_field', '"token"')
    both('auth token empty', {'type': 'auth', 'token': ''}, 'bad_field', '"token"')
    both('auth token 16385 bytes', {'type': 'auth', 'token': 't' * 16385}, 'bad_field', '"token"')
    for name, text in [('JSON: 1e999 batchSize', '{"type":"subscribe","id":"a","subscription":"s","batchSize":1e999}'),
                       ('JSON: huge integer priority', '{"type":"subscribe","id":"a","subscription":"s",'
                                                       '"priority":99999999999999999999999}'),
                       ('JSON: params duplicate key', '{"type":"subscribe","id":"a","subscription":"s",'
                                                      '"params":{"k":1,"k":2}}'),
                       ('JSON: params nested duplicate key', '{"type":"subscribe","id":"a","subscription":"s",'
                                                             '"params":{"k":[{"a":1,"b":2,"a":3}]}}')]:
        c.append((name, text.encode(), 'json', 'bad_field', None))
    subpairs = [(mp_s('type'), mp_s('subscribe')), (mp_s('id'), mp_s('a')), (mp_s('subscription'), mp_s('s'))]
    for name, params in [('bin in params', enc({'b': b'\x00\x01'}, 'msgpack')),
                         ('nested bin in params', enc({'b': [1, {'c': b'x'}]}, 'msgpack')),
                         ('ext in params', enc({'e': msgpack.ExtType(5, b'abc')}, 'msgpack')),
                         ('timestamp in params', enc({'t': msgpack.Timestamp(1, 0)}, 'msgpack')),
                         ('NaN in params', enc({'f': float('nan')}, 'msgpack')),
                         ('infinity in params', enc({'f': float('-inf')}, 'msgpack')),
                         ('integer key in params', b'\x81\x01\x02'),
                         ('nested integer key in params', b'\x81' + mp_s('a') + b'\x81\xc0\x02'),
                         ('params duplicate key', mp_map([(mp_s('k'), b'\x01'), (mp_s('k'), b'\x02')]))]:
        c.append(('msgpack: %s' % name, mp_map(subpairs + [(mp_s('params'), params)]), 'msgpack',
                  'bad_field', '"params"'))
    for name, nonce in [('bin nonce', enc(b'x', 'msgpack')), ('ext nonce', enc(msgpack.ExtType(1, b''), 'msgpack')),
                        ('NaN nonce', enc(float('nan'), 'msgpack'))]:
        c.append(('msgpack: %s' % name, mp_map([(mp_s('type'), mp_s('ping')), (mp_s('nonce'), nonce)]),
                  'msgpack', 'bad_field', '"nonce"'))
    c.append(('msgpack: id a bin', mp_map([(mp_s('type'), mp_s('unsubscribe')), (mp_s('id'), enc(b'a', 'msgpack'))]),
              'msgpack', 'bad_field', '"id"'))
    return c


def check_errors(tap, parser):
    cases = error_cases()
    results = parser.many([(b, f) for _, b, f, _, _ in cases])
    for (name, _, _, code, detail), got in zip(cases, results):
        good = (got.get('error') == code and isinstance(got.get('detail'), str)
                and 0 < len(got['detail'].encode()) <= 300
                and (detail is None or detail in got['detail']))
        tap.ok(good, '%s -> %s' % (name, code), ['got: %r' % (got,)])
    # the id is reported with errors about other fields (for the error's ref)
    got = parser.one(enc({'type': 'subscribe', 'id': 'mine', 'subscription': 's', 'priority': 77}, 'json'), 'json')
    tap.is_eq((got.get('error'), got.get('id')), ('bad_field', 'mine'), 'bad_field reports the valid id')


def check_server_messages(tap, db):
    exp = [
        {'type': 'welcome', 'protocol': 1, 'server': 'rtsub/0.1', 'epoch': '7123456789012345678-1',
         'role': 'app_user "quoted" é', 'exp': 1700000000, 'heartbeatMs': 15000,
         'limits': {'maxSubscriptions': 100, 'maxMessageSize': 65536, 'maxMessagesPerSecond': 50,
                    'maxSendBuffer': 8388608}},
        None,
        {'type': 'subscribed', 'id': 'sub-1', 'at': '0/1A2B3C8:3', 'epoch': '00c0ffee12345678',
         'snapshot': True, 'resumed': False},
        {'type': 'live', 'id': 'sub-1', 'at': '0/1A2B3F0:2', 'epoch': '00c0ffee12345678'},
        {'type': 'unsubscribed', 'id': 'sub-1'},
        {'type': 'pong', 'nonce': 'né\n'},
        {'type': 'pong', 'nonce': 42},
        {'type': 'pong', 'nonce': -1500.0},
        {'type': 'pong', 'nonce': 2 ** 64 - 1},
        {'type': 'pong', 'nonce': True},
        {'type': 'pong', 'nonce': None},
        {'type': 'pong'},
        {'type': 'refreshed', 'exp': 1700003600},
        {'type': 'error', 'code': 'bad_field', 'message': 'field "id" must be a string', 'ref': 'sub-1'},
        {'type': 'error', 'code': 'bad_message', 'message': 'invalid JSON'},
        {'type': 'heartbeat', 'at': '16/B374D848:0'},
        {'type': 'reset', 'id': 'sub-1', 'reason': 'epoch changed'},
    ]
    exp[1] = dict(exp[0], exp=None)
    got = {}
    for fmt in ('json', 'msgpack'):
        rows = db.query("SELECT encode(m, 'hex') FROM rtsub._test_server_messages('%s') m" % fmt)
        got[fmt] = [bytes.fromhex(r[0]) for r in rows]
    tap.is_eq((len(got['json']), len(got['msgpack'])), (len(exp), len(exp)), 'server messages: count')
    for i, e in enumerate(exp):
        if i >= len(got['json']) or i >= len(got['msgpack']):
            break
        j, m = got['json'][i], got['msgpack'][i]
        try:
            jd = json.loads(j.decode('utf-8'), object_pairs_hook=dict)
            ok_line = b'\n' not in j
        except Exception as ex:  # noqa: BLE001
            jd, ok_line = 'undecodable: %r (%r)' % (ex, j), False
        try:
            u = msgpack.Unpacker(raw=False, strict_map_key=True)
            u.feed(m)
            md = u.unpack()
            if u.tell() != len(m):
                md = 'trailing bytes'
        except Exception as ex:  # noqa: BLE001
            md = 'undecodable: %r (%r)' % (ex, m)
        tap.ok(jd == e and ok_line, 'server message %s (json)' % e['type'], ['got: %r' % (jd,), 'raw: %r' % j,
                                                                            'expected: %r' % (e,)])
        tap.ok(md == e and type(md.get('nonce')) is type(e.get('nonce')) if isinstance(md, dict) else False,
               'server message %s (msgpack)' % e['type'], ['got: %r' % (md,), 'raw: %r' % m, 'expected: %r' % (e,)])
    return got


# ------------------------------------------------------------ fuzzing

FIELD_NAMES = ['type', 'id', 'subscription', 'params', 'snapshot', 'resume', 'epoch', 'after',
               'batchSize', 'throttleMs', 'includeMetadata', 'priority', 'nonce', 'token', 'x']


def rand_str(rng, maxlen=12):
    alphabets = [string.ascii_letters, string.printable, 'éü中😀\u2028\x01"\\/', 'ab']
    a = rng.choice(alphabets)
    return ''.join(rng.choice(a) for _ in range(rng.randrange(maxlen + 1)))


def rand_scalar(rng, fmt):
    k = rng.randrange(12)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.randrange(-3, 1200)
    if k == 3:
        return rng.choice([0, 1, 5, 9, 10, 1000, 1001, 10000, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 2 ** 31])
    if k == 4:
        return rng.choice([0.5, -0.0, 1e300, 1.0, 10.0, 3.14159, 1e-9])
    if k == 5 and fmt == 'msgpack':
        return rng.choice([float('nan'), float('inf'), b'', b'\x00bin', msgpack.ExtType(3, b'x')])
    if k == 6:
        return rng.choice(sorted(TYPES) + ['pong', ''])
    return rand_str(rng)


def rand_value(rng, fmt, depth):
    if depth > 34 or rng.random() < 0.55:
        return rand_scalar(rng, fmt)
    if rng.random() < 0.5:
        return [rand_value(rng, fmt, depth + 1) for _ in range(rng.randrange(4))]
    d = {}
    for _ in range(rng.randrange(5)):
        key = rng.choice(FIELD_NAMES) if rng.random() < 0.5 else rand_str(rng, 6)
        if fmt == 'msgpack' and rng.random() < 0.05:
            key = rng.randrange(5)
        d[key] = rand_value(rng, fmt, depth + 1)
    return d


def rand_message(rng, fmt):
    """A random, mostly plausible message object."""
    t = rng.choice(sorted(TYPES) + ['subscribe', 'nope'])
    m = {'type': t} if rng.random() < 0.95 else {}
    if rng.random() < 0.7:       # the required fields, valid
        m.update({'subscribe': {'id': 'sub-%d' % rng.randrange(99), 'subscription': 'orders'},
                  'unsubscribe': {'id': 'sub-1'}, 'refresh': {'token': 'a.b.c'},
                  'auth': {'token': 'a.b.c'}}.get(t, {}))
    names = rng.sample(FIELD_NAMES, rng.randrange(len(FIELD_NAMES)))
    for name in names[:rng.choice([1, 2, 3, len(names)])]:
        if name in m and rng.random() < 0.8:
            continue
        r = rng.random()
        if name == 'id' and r < 0.6:
            m[name] = rng.choice(['a', 'sub-1', 'x' * 64, 'x' * 65, '', 'é', 'a b'])
        elif name == 'subscription' and r < 0.6:
            m[name] = rng.choice(['orders', 's' * 128, 's' * 129, ''])
        elif name == 'params' and r < 0.7:
            m[name] = rand_value(rng, fmt, 1) if r < 0.2 else {
                rand_str(rng, 5): rand_value(rng, fmt, 2) for _ in range(rng.randrange(5))}
        elif name == 'resume' and r < 0.6:
            m[name] = {'epoch': rand_scalar(rng, fmt), 'after': rng.choice(['0/1:1', 5, None])}
        elif name in ('batchSize', 'throttleMs', 'priority') and r < 0.7:
            m[name] = rng.choice([0, 1, 5, 9, 10, 1000, 1001, 10000, 10001, -1, 2.0, 2.5])
        elif name == 'token' and r < 0.5:
            m[name] = rng.choice(['tok', 't' * 16384, 't' * 16385, ''])
        else:
            m[name] = rand_value(rng, fmt, 1)
    return m


def encode_loose(obj, fmt, rng):
    if fmt == 'json':
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5,
                          separators=rng.choice([(',', ':'), (', ', ': ')])).encode('utf-8')
    try:
        return msgpack.packb(obj, use_bin_type=True, use_single_float=rng.random() < 0.2)
    except (OverflowError, ValueError):
        return msgpack.packb(obj, use_bin_type=True)


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(6)
        if k == 0 and b:                                   # bit flips
            for _ in range(rng.randrange(1, 9)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif k == 1 and b:                                 # truncate
            del b[rng.randrange(len(b)):]
        elif k == 2:                                       # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        elif k == 3 and b:                                 # delete a range
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 8)]
        elif k == 4 and b:                                 # interesting bytes
            i = rng.randrange(len(b))
            b[i] = rng.choice([0x00, 0xff, 0xc1, 0xdd, 0xdf, 0xdb, 0xc6, 0x22, 0x5c, 0x7b, 0x5b, 0x7d, 0x80, 0x9f])
        elif k == 5:                                       # duplicate a slice
            if b:
                i = rng.randrange(len(b))
                j = min(len(b), i + rng.randrange(1, 32))
                b[j:j] = b[i:j]
    return bytes(b)


def json_ok(text):
    def bad_const(c):
        raise ValueError(c)
    try:
        return json.loads(text.decode('utf-8'), parse_constant=bad_const)
    except Exception as e:  # noqa: BLE001
        return e


class Pairs(list):
    """a decoded map as its (key, value) pairs (keys may be unhashable)."""


def mp_ok(data):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=Pairs,
                               ext_hook=lambda code, body: ('ext', code, body))
    except Exception as e:  # noqa: BLE001
        if 'imestamp' in str(e):     # python's check of ext -1: stricter than the format
            return Pairs()
        return e


def check_result(inp, fmt, got, generated):
    """Problems with one fuzz result (a list of strings)."""
    p = []
    if not isinstance(got, dict):
        return ['not an object: %r' % (got,)]
    if 'error' in got:
        if got['error'] not in ERRORS:
            p.append('undocumented error code')
        if not isinstance(got.get('detail'), str) or not got['detail'] or len(got['detail'].encode()) > 300:
            p.append('bad detail')
        if generated is not None and got['error'] == 'bad_message' and generated:
            p.append('a well-formed generated message was rejected as bad_message')
        return p
    if got.get('type') not in TYPES:
        p.append('bad type')
    # whatever PostgreSQL accepted, an independent decoder accepts as a map
    ref = json_ok(inp) if fmt == 'json' else mp_ok(inp)
    if not isinstance(ref, (dict, Pairs)):
        p.append('accepted, but the reference decoder says %r' % (ref,))
    t = got.get('type')
    if t in ('subscribe', 'unsubscribe'):
        i = got.get('id')
        if not (isinstance(i, str) and 1 <= len(i) <= 64 and all(' ' <= ch <= '~' for ch in i)):
            p.append('bad id')
    if t == 'subscribe':
        s = got.get('subscription')
        if not (isinstance(s, str) and 1 <= len(s.encode()) <= 128):
            p.append('bad subscription')
        if not (1 <= got.get('batch_size', 0) <= 1000 and 0 <= got.get('throttle_ms', -1) <= 10000
                and 0 <= got.get('priority', -1) <= 9):
            p.append('number out of range')
        pj = got.get('params_json')
        if pj is not None:
            try:
                pv = json.loads(pj, object_pairs_hook=_no_dups)
                if not isinstance(pv, dict):
                    p.append('params not an object')
            except Exception as e:  # noqa: BLE001
                p.append('params_json invalid: %r' % e)
    if t == 'ping' and got.get('nonce') is not None:
        try:
            nv = json.loads(got['nonce'])
            if isinstance(nv, (dict, list)):
                p.append('nonce not a scalar')
        except Exception:  # noqa: BLE001
            p.append('nonce not JSON')
    if t in ('refresh', 'auth') and not (isinstance(got.get('token'), str) and 1 <= len(got['token'].encode()) <= 16384):
        p.append('bad token')
    return p


def _no_dups(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError('duplicate key in canonical params')
    if keys != sorted(keys, key=lambda k: k.encode('utf-8')):
        raise ValueError('params keys not sorted')
    return dict(pairs)


def _depth(v):
    if isinstance(v, dict):
        return 1 + max([_depth(x) for x in v.values()] or [0])
    if isinstance(v, list):
        return 1 + max([_depth(x) for x in v] or [0])
    return 0


def _clean_strings(v):
    """no NUL anywhere (they cannot be represented) and only str keys."""
    if isinstance(v, str):
        return '\x00' not in v
    if isinstance(v, dict):
        return all(isinstance(k, str) and _clean_strings(k) and _clean_strings(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_clean_strings(x) for x in v)
    return True


def fuzz_inputs(rng, fmt, n):
    """[(bytes, generated-well-formed: True/False/None)]"""
    seeds = [encode_loose(rand_message(rng, fmt), fmt, rng) for _ in range(40)]
    seeds += [enc({'type': 'subscribe', 'id': 'a', 'subscription': 's', 'params': {'k': [1, 'x', {'y': None}]},
                   'resume': {'epoch': 'e', 'after': '0/1:2'}, 'batchSize': 5}, fmt),
              enc({'type': 'ping', 'nonce': 'abc'}, fmt), enc({'type': 'auth', 'token': 'x.y.z'}, fmt)]
    out = []
    while len(out) < n:
        k = rng.randrange(10)
        if k < 3:                                   # a generated message
            obj = rand_message(rng, fmt) if rng.random() < 0.85 else rand_value(rng, fmt, 0)
            data = encode_loose(obj, fmt, rng)
            wellformed = (isinstance(obj, dict) and _clean_strings(obj) and _depth(obj) <= 32
                          and (fmt == 'json' or True))
            out.append((data, wellformed))
        elif k < 8:                                 # a mutated seed
            out.append((mutate(rng, rng.choice(seeds)), None))
        elif k < 9:                                 # a splice of two seeds
            a, b = rng.choice(seeds), rng.choice(seeds)
            out.append((a[:rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1):], None))
        else:                                       # random bytes
            if fmt == 'json' and rng.random() < 0.5:
                data = ''.join(rng.choice('{}[]":,\\ u0123456789abcdefnulltrue-+.eE') for _ in
                               range(rng.randrange(60))).encode()
            else:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
            out.append((data, None))
    return out


def server_alive(db):
    for _ in range(60):
        try:
            if db.scalar('SELECT 1') == '1':
                return True
        except PsqlError:
            pass
        time.sleep(0.5)
    return False


def fuzz(tap, parser, db, fmt, rng):
    inputs = fuzz_inputs(rng, fmt, FUZZ_N)
    crashed, problems, counts = [], [], {}
    alive_all = True
    for start in range(0, len(inputs), BATCH):
        batch = inputs[start:start + BATCH]
        try:
            results = parser.many([(b, fmt) for b, _ in batch])
        except PsqlError as e:
            # find the culprit one by one
            crashed.append('batch at %d: %s' % (start, str(e)[:300]))
            server_alive(db)
            for b, _ in batch:
                try:
                    parser.one(b, fmt)
                except PsqlError as e2:
                    crashed.append('input %s: %s' % (b.hex()[:400], str(e2)[:200]))
                    server_alive(db)
            results = None
        if not server_alive(db):
            alive_all = False
            break
        if results is None:
            continue
        for (b, gen), got in zip(batch, results):
            key = got.get('error') or got.get('type')
            counts[key] = counts.get(key, 0) + 1
            p = check_result(b, fmt, got, gen)
            if p:
                problems.append('%s: input %s -> %r' % ('; '.join(p), b.hex()[:3000], got))
    tap.ok(not crashed and alive_all, 'fuzz %s: %d inputs, no backend failure, SELECT 1 after every batch'
           % (fmt, len(inputs)), crashed[:10])
    tap.ok(not problems, 'fuzz %s: every result is a valid message or a documented error' % fmt, problems[:10])
    tap.note('fuzz %s outcomes: %s' % (fmt, ', '.join('%s=%d' % kv for kv in sorted(counts.items()))))
    tap.ok(len([k for k in counts if k in TYPES]) >= 4 and len([k for k in counts if k in ERRORS]) == 3,
           'fuzz %s: reached most message types and every error code' % fmt, [repr(counts)])


def big_inputs(tap, parser, rng):
    big = bytes(rng.randrange(256) for _ in range(1 << 20))
    msg = enc({'type': 'subscribe', 'id': 'a', 'subscription': 's',
               'params': {'k%d' % i: [i, 'v' * (i % 50)] for i in range(20000)}}, 'json')
    res = parser.many([(big, 'json'), (big, 'msgpack'), (msg, 'json'),
                       (enc(json.loads(msg), 'msgpack'), 'msgpack')])
    tap.ok(res[0].get('error') == 'bad_message' and res[1].get('error') == 'bad_message',
           '1 MB of random bytes: bad_message in both formats', [repr(res[:2])[:500]])
    tap.ok(res[2].get('type') == 'subscribe' and res[2].get('params_json') == res[3].get('params_json')
           and len(json.loads(res[2]['params_json'])) == 20000,
           'a 600 kB subscribe with 20,000 params parses the same in both formats',
           [repr(res[2])[:300], repr(res[3])[:300]])


# ------------------------------------------------------------ main

def ensure_functions(db):
    for sig, sql in FUNCTIONS_SQL.items():
        if db.scalar("SELECT to_regprocedure('%s') IS NULL" % sig) == 't':
            db.execute(sql)


def main():
    tap = Tap()
    admin = Psql()
    db = Psql(DB)
    parser = Parser(db)
    rng = random.Random(SEED)
    tap.note('fuzz seed %d (set RTSUB_FUZZ_SEED to repeat)' % SEED)
    t0 = time.time()
    try:
        admin.recreate_database(DB)
        db.execute('CREATE EXTENSION rtsub;')
        ensure_functions(db)
        tap.is_eq(db.scalar("SELECT has_function_privilege('public', "
                            "'rtsub.parse_client_message(bytea,text)', 'EXECUTE')"), 'f',
                  'parse_client_message is not executable by PUBLIC')
        for name, fn in [('valid messages', lambda: check_cases(tap, parser)),
                         ('error paths', lambda: check_errors(tap, parser)),
                         ('server messages', lambda: check_server_messages(tap, db)),
                         ('large inputs', lambda: big_inputs(tap, parser, rng)),
                         ('fuzz json', lambda: fuzz(tap, parser, db, 'json', rng)),
                         ('fuzz msgpack', lambda: fuzz(tap, parser, db, 'msgpack', rng))]:
            try:
                fn()
            except Exception:  # noqa: BLE001
                tap.fail_exception('%s ran without error' % name)
        try:
            db.query("SELECT rtsub.parse_client_message('\\x00', 'xml')")
            tap.ok(False, 'an unknown format is an error')
        except PsqlError as e:
            tap.ok('unknown rtsub message format' in e.stderr, 'an unknown format is an error', [e.stderr])
        tap.ok(server_alive(db), 'server still up at the end')
    except Exception:  # noqa: BLE001
        tap.fail_exception('test setup')
    finally:
        if not os.environ.get('RTSUB_KEEP_DB'):
            try:
                admin.drop_database(DB)
            except Exception:  # noqa: BLE001
                traceback.print_exc(file=sys.stdout)
    tap.note('took %.1f s' % (time.time() - t0))
    return tap.done()


if __name__ == '__main__':
    sys.exit(main())
