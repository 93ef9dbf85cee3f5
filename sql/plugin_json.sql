-- The rtsub output plugin, JSON form: options, every operation, old rows,
-- TOAST, messages, transactions, and tables published or altered
-- mid-stream.  LSN, xid and time vary between runs, so most queries turn
-- them off and one checks their form.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION rtsub;
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), doc text);
ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE full_t (id int PRIMARY KEY, doc text, n int);
ALTER TABLE full_t ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE other (id int PRIMARY KEY, v text);
SELECT rtsub.publish('items');
SELECT rtsub.publish('full_t', replica_identity_full => true);
SELECT 'init' FROM pg_create_logical_replication_slot('regression_slot', 'rtsub');

-- option errors
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'nope', '1');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'format', 'json', 'format', 'json');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'include_xid', 'on', 'include_xid', 'off');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'format', 'xml');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'include_xid', 'maybe');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'old_row', 'all');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'tables', 'noschema');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'tables', 'a.b.c');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'tables', ',');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL, 'format', 'msgpack');

-- insert, update, update of the key, delete
INSERT INTO items VALUES (1, 'pen', 1.50, 'short'), (2, E'quote " and \\ and \n newline', NULL, '');
UPDATE items SET price = 2.00 WHERE id = 1;
UPDATE items SET id = 10 WHERE id = 2;
DELETE FROM items WHERE id = 10;
INSERT INTO other VALUES (1, 'not published');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', '0', 'include_xid', '0', 'include_timestamp', '0');

-- lsn, pos, xid and ts are there by default, in their documented form
BEGIN;
INSERT INTO items VALUES (3, 'a', 1, 'x');
INSERT INTO items VALUES (4, 'b', 2, 'y');
COMMIT;
SELECT count(*) AS records, count(DISTINCT data::json ->> 'lsn') AS distinct_lsns,
       bool_and((data::json ->> 'lsn')::pg_lsn > lsn) AS lsn_is_commit_lsn,
       array_agg((data::json -> 'pos')::text::int ORDER BY lsn) AS pos,
       bool_and((data::json ->> 'xid')::xid = xid) AS xid_ok,
       bool_and((data::json ->> 'ts') ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$') AS ts_form,
       bool_and(abs(extract(epoch FROM (data::json ->> 'ts')::timestamptz - now())) < 3600) AS ts_recent
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);

-- transactions: B and C frame what a transaction emitted; pos counts
BEGIN;
INSERT INTO items VALUES (5, 'c', 3, 'z');
INSERT INTO other VALUES (2, 'skipped');
SAVEPOINT s;
INSERT INTO items VALUES (6, 'rolled back', 0, '');
ROLLBACK TO SAVEPOINT s;
UPDATE items SET name = 'C' WHERE id = 5;
COMMIT;
BEGIN;
INSERT INTO items VALUES (7, 'aborted', 0, '');
ROLLBACK;
INSERT INTO other VALUES (3, 'nothing to emit');
SELECT regexp_replace(data, '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"X/X"') AS data
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_xid', 'off', 'include_timestamp', 'off', 'include_transaction', 'on');
BEGIN;
INSERT INTO items VALUES (8, 'd', 3, 'z');
UPDATE items SET name = 'D' WHERE id = 8;
DELETE FROM items WHERE id = 8;
COMMIT;
SELECT regexp_replace(data, '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"X/X"') AS data
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_xid', 'off', 'include_timestamp', 'off', 'include_transaction', 'on');

-- TOAST: an unchanged out-of-line value is marked, never null or dropped
INSERT INTO items SELECT 20, 'big', 1, string_agg(md5(i::text), '') FROM generate_series(1, 200) i;
UPDATE items SET price = 9 WHERE id = 20;
UPDATE items SET doc = 'now small' WHERE id = 20;
SELECT data::json -> 'op' AS op, length(data::json -> 'new' ->> 'doc') AS doc_length,
       data::json -> 'unchanged' AS unchanged, data::json -> 'new' -> 'price' AS price
  FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);
-- ... and with REPLICA IDENTITY FULL it is taken from the old row
INSERT INTO full_t SELECT 1, string_agg(md5(i::text), ''), 1 FROM generate_series(1, 200) i;
UPDATE full_t SET n = 2;
DELETE FROM full_t;
SELECT data::json -> 'op' AS op, md5(data::json -> 'new' ->> 'doc') = md5(string_agg(md5(i::text), '')) AS new_doc_complete,
       md5(data::json -> 'old' ->> 'doc') = md5(string_agg(md5(i::text), '')) AS old_doc_complete,
       data::json -> 'unchanged' AS unchanged, data::json -> 'new' -> 'n' AS new_n, data::json -> 'old' -> 'n' AS old_n
  FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL), generate_series(1, 200) i
 GROUP BY data ORDER BY data::json ->> 'op';

-- old rows: auto (key or whole row), key, none
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'old_row', 'key', 'tables', 'public.full_t')
  WHERE data::json ->> 'op' = 'D';
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'old_row', 'none')
  WHERE data::json ->> 'op' = 'D';

-- messages: transactional ones with an rtsub prefix
BEGIN;
SELECT 'msg' FROM pg_logical_emit_message(true, 'rtsub', 'hello "world"');
SELECT 'msg' FROM pg_logical_emit_message(true, 'rtsub:chat', '\x00ff'::bytea);
SELECT 'msg' FROM pg_logical_emit_message(true, 'other', 'ignored');
SELECT 'msg' FROM pg_logical_emit_message(false, 'rtsub', 'not transactional');
SELECT 'msg' FROM pg_logical_emit_message(true, 'rtsubx', 'wrong prefix');
INSERT INTO items VALUES (30, 'after messages', 1, '');
COMMIT;
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'include_messages', 'off');

-- truncate: one record per emitted table
TRUNCATE items, other, full_t RESTART IDENTITY;
SELECT regexp_replace(data, '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"X/X"') AS data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_xid', 'off', 'include_timestamp', 'off');

-- publication is read as of each change: a table published mid-stream
INSERT INTO other VALUES (10, 'before publish');
SELECT rtsub.publish('other');
INSERT INTO other VALUES (11, 'after publish');
SELECT rtsub.unpublish('other');
INSERT INTO other VALUES (12, 'after unpublish');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');

-- the tables option instead of publications
INSERT INTO other VALUES (13, 'x');
INSERT INTO items VALUES (40, 'y', 1, '');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'tables', 'public.other');
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'tables', ' *.items , nosuch.* ');
SELECT count(*) FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL, 'tables', '*');

-- a table altered mid-stream is described as it was at each change
INSERT INTO items VALUES (50, 'before', 1, '');
ALTER TABLE items ADD COLUMN qty int DEFAULT 7;
INSERT INTO items VALUES (51, 'added', 1, '', 3);
ALTER TABLE items DROP COLUMN doc;
INSERT INTO items VALUES (52, 'dropped', 1, 4);
ALTER TABLE items RENAME COLUMN name TO title;
ALTER TABLE items ALTER COLUMN qty TYPE text;
UPDATE items SET qty = 'many' WHERE id = 52;
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');

SELECT pg_drop_replication_slot('regression_slot');
-- without the extension, the tables option is required
DROP EXTENSION rtsub;
SELECT 'init' FROM pg_create_logical_replication_slot('regression_slot', 'rtsub');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL);
INSERT INTO other VALUES (100, 'no extension');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'tables', '*');
SELECT pg_drop_replication_slot('regression_slot');
DROP TABLE items, full_t, other;
