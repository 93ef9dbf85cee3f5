-- The rtsub output plugin and partitioned tables: a published partitioned
-- table publishes its partitions, reported under their own names, or
-- under the root with via_root or the partition_root option; partitions
-- attached mid-stream follow.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION rtsub;
CREATE TABLE events (id int, region text, payload text, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us (region text, id int, payload text, extra int DEFAULT 0, PRIMARY KEY (id, region));
ALTER TABLE events_us DROP COLUMN extra;  -- a different layout than the root
ALTER TABLE events ATTACH PARTITION events_us FOR VALUES IN ('us');
SELECT rtsub.publish('events');
SELECT 'init' FROM pg_create_logical_replication_slot('regression_slot', 'rtsub');

INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'us', 'b');
UPDATE events SET payload = 'c' WHERE id = 2;
DELETE FROM events WHERE id = 1;
-- under the partitions' names
SELECT data FROM pg_logical_slot_peek_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');
-- under the root's name when asked
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'partition_root', 'on');

-- via_root: the publication asks for the root's name
SELECT rtsub.publish('events', via_root => true);
INSERT INTO events VALUES (3, 'us', 'd');
-- a partition attached mid-stream is published with its root
CREATE TABLE events_asia PARTITION OF events FOR VALUES IN ('asia');
INSERT INTO events VALUES (4, 'asia', 'e');
UPDATE events SET region = 'eu' WHERE id = 4;   -- moves between partitions
TRUNCATE events;
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');

-- a single partition can be published alone
SELECT rtsub.unpublish('events');
SELECT rtsub.publish('events_eu');
INSERT INTO events VALUES (5, 'eu', 'f'), (6, 'us', 'g');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off');
-- the tables option matches a partition through its root's name
INSERT INTO events VALUES (7, 'us', 'h');
SELECT data FROM pg_logical_slot_get_changes('regression_slot', NULL, NULL,
  'include_lsn', 'off', 'include_xid', 'off', 'include_timestamp', 'off', 'tables', 'public.events');

SELECT pg_drop_replication_slot('regression_slot');
DROP TABLE events;
DROP EXTENSION rtsub;
