-- The rtsub output plugin, JSON form: values of every built-in type,
-- empty string versus NULL, dropped and generated columns, 1,600-column
-- rows and a 100 MB value.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
SET extra_float_digits = 0;
CREATE EXTENSION rtsub;
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN jdoc AS jsonb;
CREATE TYPE pair AS (a int, b text);
CREATE TABLE types (
  id int PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint, o oid,
  f4 real, f8 double precision, num numeric, num2 numeric(6,2),
  b boolean, j json, jb jsonb, by bytea,
  t text, vc varchar(10), c char(5), nm name, "char" "char",
  u uuid, d date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
  ia int[], ta text[], r int4range, tr tstzrange,
  ip inet, cidr cidr, mac macaddr, mac8 macaddr8,
  pt point, ln line, ls lseg, bx box, pth path, pg polygon, ci circle,
  bt bit(4), vb bit varying, m money, x xml, tv tsvector, tq tsquery,
  e mood, dom posint, jd jdoc, cp pair, lsn pg_lsn, rc regclass
);
SELECT rtsub.publish('types');
SELECT 'init' FROM pg_create_logical_replication_slot('regression_slot', 'rtsub');

INSERT INTO types VALUES (1,
  -32768, 2147483647, 9223372036854775807, 4294967295,
  1.5, 0.1, 123456789012345678901234567890.123456789, 12.50,
  true, '{"a": [1, 2.5, "x", null, true], "a": "dup"}', '{"b": {"c": 1e2}, "a": [1, 2]}', '\xdeadbeef00',
  E'tab\there, quote " backslash \\ unicode é ✓ \u0001', 'varchar', 'ab', 'a name', 'q',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-11-23', '2026-11-23 14:13:43.5', '2026-11-23 14:13:43.5+02',
  '14:13:43', '14:13:43+02', '1 year 2 mons 3 days 04:05:06.7',
  '{1,NULL,3}', '{"a b","c\"d",NULL}', '[1,10)', '[2026-01-01 00:00+00,2027-01-01 00:00+00)',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
  '(1,2)', '{1,2,3}', '[(0,0),(1,1)]', '((0,0),(1,1))', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(2,0))', '<(0,0),5>',
  B'1010', B'101', 12.34, '<a>x &amp; y</a>', 'the quick fox', 'quick & fox',
  'happy', 42, '"scalar"', ROW(1, 'one'), '0/16B2D80', 'types');
INSERT INTO types (id, f4, f8, num) VALUES (2, 'NaN', 'Infinity', 'NaN');
INSERT INTO types (id, f4, f8, num, i8) VALUES (3, '-Infinity', -0.0, '-Infinity', -9223372036854775808);
INSERT INTO types (id, f8, f4) VALUES (4, 1e-300, 3.4e38);
INSERT INTO types (id, f8, jb, j) VALUES (5, 1e300, '5', E'{\n  "multi": "line"\n}');
-- empty string, empty array, empty bytea and empty json containers are not NULL
INSERT INTO types (id, t, vc, ta, by, jb, j) VALUES (6, '', '', '{}', '', '{}', '[]');
INSERT INTO types (id) VALUES (7);

SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');
-- every record is valid JSON, with every column present
SELECT count(*) AS records, bool_and(json_typeof(data::json) = 'object') AS objects,
       min((SELECT count(*) FROM json_object_keys(data::json -> 'new'))) AS min_columns
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);

-- dropped and generated columns
CREATE TABLE gen (id int PRIMARY KEY, a int, gone text, doubled int GENERATED ALWAYS AS (a * 2) STORED);
ALTER TABLE gen DROP COLUMN gone;
SELECT rtsub.publish('gen');
INSERT INTO gen (id, a) VALUES (1, 21);
UPDATE gen SET a = 5;
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');

-- 1,600 columns
SELECT format('CREATE TABLE wide (id int PRIMARY KEY, %s)',
              string_agg(format('c%s int', i), ', ')) FROM generate_series(2, 1600) i \gexec
SELECT rtsub.publish('wide');
SELECT format('INSERT INTO wide VALUES (1, %s)', string_agg(i::text, ', ')) FROM generate_series(2, 1600) i \gexec
SELECT (SELECT count(*) FROM json_object_keys(data::json -> 'new')) AS columns,
       data::json -> 'new' -> 'c1600' AS c1600, data::json -> 'new' -> 'c2' AS c2
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);
DROP TABLE wide;

-- a 100 MB value (and its update while unchanged stays marked, not copied)
CREATE TABLE huge (id int PRIMARY KEY, body text, n int);
SELECT rtsub.publish('huge');
INSERT INTO huge SELECT 1, repeat('0123456789', 10 * 1000 * 1000), 1;
UPDATE huge SET n = 2;
SELECT data::json ->> 'op' AS op, length(data) > 100000000 AS over_100mb,
       md5(data::json -> 'new' ->> 'body') = md5(repeat('0123456789', 10 * 1000 * 1000)) AS body_intact,
       data::json -> 'unchanged' AS unchanged
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);
DROP TABLE huge;

SELECT pg_drop_replication_slot('regression_slot');
DROP TABLE types, gen;
DROP TYPE pair;
DROP DOMAIN posint;
DROP DOMAIN jdoc;
DROP TYPE mood;
DROP EXTENSION rtsub;
