-- Catalogs: publish / unpublish, subscriptions, policies, claims,
-- privileges, and the event triggers that keep definitions valid.
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION rtsub;

-- the objects are commented
SELECT count(*) AS uncommented FROM pg_depend d
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'rtsub'
 WHERE d.deptype = 'e' AND d.classid IN ('pg_class'::regclass, 'pg_proc'::regclass)
   AND obj_description(d.objid, d.classid::regclass::text) IS NULL
   AND NOT (d.classid = 'pg_class'::regclass
            AND (SELECT relkind FROM pg_class WHERE oid = d.objid) IN ('i', 'S', 't'));

CREATE TABLE items (id bigint PRIMARY KEY, org_id int NOT NULL, owner text,
                    name text, price numeric(10,2), secret text);
CREATE TABLE nokey (a int, b text);
CREATE TABLE nothing_ident (id int PRIMARY KEY);
ALTER TABLE nothing_ident REPLICA IDENTITY NOTHING;
CREATE UNLOGGED TABLE unlogged_t (id int PRIMARY KEY);
CREATE TEMP TABLE temp_t (id int PRIMARY KEY);
CREATE VIEW items_v AS SELECT * FROM items;
CREATE SEQUENCE a_seq;

-- publish
SELECT rtsub.publish('items');
SELECT rtsub.publish('items');  -- idempotent
SELECT rtsub.publish('items', native_rls => true);  -- warns: RLS not enabled
SELECT rtsub.publish('items', native_rls => false);
SELECT schema_name, table_name, via_root, native_rls, replica_identity, rls_enabled,
       subscriptions, policies FROM rtsub.published_tables;

-- publish errors
SELECT rtsub.publish('nokey');
SELECT rtsub.publish('nothing_ident');
SELECT rtsub.publish('unlogged_t');
SELECT rtsub.publish('temp_t');
SELECT rtsub.publish('items_v');
DROP VIEW items_v;
SELECT rtsub.publish('a_seq');
SELECT rtsub.publish('pg_class');
SELECT rtsub.publish('no_such_table');
SELECT rtsub.publish('items', via_root => true);
SELECT rtsub.publish(NULL);
-- a table without a key is published with REPLICA IDENTITY FULL on request
SELECT rtsub.publish('nokey', replica_identity_full => true);
SELECT relreplident FROM pg_class WHERE oid = 'nokey'::regclass;

-- subscriptions
SELECT rtsub.create_subscription('org_items', 'items',
    filter => 'org_id = params.org_id AND (owner = rtsub.claim(''sub'') OR price < params.max_price)',
    columns => '{id,org_id,owner,name,price}',
    params => '{"org_id": "integer", "max_price": "numeric"}',
    roles => '{public}');
SELECT rtsub.create_subscription('all_items', 'items');
SELECT rtsub.create_subscription('in_list', 'items', filter => 'name IN (''a'', ''b'') OR org_id = ANY (params.orgs)',
    params => '{"orgs": "int[]"}');
SELECT name, "table", filter, columns, params, roles FROM rtsub.subscriptions ORDER BY name;

-- subscription errors: nothing is stored
SELECT rtsub.create_subscription('org_items', 'items');
SELECT rtsub.create_subscription('bad name!', 'items');
SELECT rtsub.create_subscription(NULL, 'items');
SELECT rtsub.create_subscription('s1', 'nothing_ident');
SELECT rtsub.create_subscription('s1', 'items', columns => '{id,nope}');
SELECT rtsub.create_subscription('s1', 'items', columns => '{name,price}');
SELECT rtsub.create_subscription('s1', 'items', columns => '{id,id}');
SELECT rtsub.create_subscription('s1', 'items', columns => '{id,NULL}');
SELECT rtsub.create_subscription('s1', 'items', params => '[1]');
SELECT rtsub.create_subscription('s1', 'items', params => '{"Org": "int"}');
SELECT rtsub.create_subscription('s1', 'items', params => '{"org": 5}');
SELECT rtsub.create_subscription('s1', 'items', params => '{"org": "no_such_type"}');
SELECT rtsub.create_subscription('s1', 'items', params => '{"org": "anyelement"}');
SELECT rtsub.create_subscription('s1', 'items', roles => '{}');
SELECT rtsub.create_subscription('s1', 'items', roles => '{no_such_role}');
SELECT rtsub.create_subscription('s1', 'items', filter => 'org_id = params.nope');
SELECT rtsub.create_subscription('s1', 'items', filter => 'org_id = params.org', params => '{"org": "text"}');
SELECT rtsub.create_subscription('s1', 'items', filter => 'no_such_col = 1');
SELECT count(*) AS s1_stored FROM rtsub.subscription WHERE name = 's1';

-- alter
SELECT rtsub.alter_subscription('all_items', filter => 'price > 10', columns => '{id,name,price}');
SELECT rtsub.alter_subscription('all_items', columns => '{}');
SELECT rtsub.alter_subscription('org_items', params => '{"org_id": "integer"}');  -- filter still uses max_price
SELECT rtsub.alter_subscription('nope', filter => 'true');
SELECT name, filter, columns, params FROM rtsub.subscriptions WHERE name IN ('all_items', 'org_items') ORDER BY name;

-- policies
CREATE ROLE regress_reader;
CREATE ROLE regress_writer;
SELECT rtsub.create_policy('items', 'own_rows', 'owner = rtsub.claim(''sub'')');
SELECT rtsub.create_policy('items', 'org_admin', 'org_id = (rtsub.claims() ->> ''org'')::int', roles => '{regress_reader}');
SELECT rtsub.create_policy('items', 'no_secret', 'secret IS NULL', permissive => false);
SELECT "table", name, using_expr, roles, permissive FROM rtsub.policies ORDER BY name;
-- policy errors
SELECT rtsub.create_policy('items', 'own_rows', 'true');
SELECT rtsub.create_policy('items', 'p2', 'org_id = params.x');
SELECT rtsub.create_policy('items', 'p2', NULL);
SELECT rtsub.create_policy('items', '', 'true');
SELECT rtsub.create_policy('nothing_ident', 'p2', 'true');
SELECT rtsub.create_policy('items', 'p2', 'random() > 0.5');
SELECT rtsub.drop_policy('items', 'nope');
SELECT rtsub.drop_policy('items', 'nope', if_exists => true);
SELECT rtsub.drop_policy('items', 'no_secret');

-- claims, PostgREST style
SELECT rtsub.claims(), rtsub.claim('sub');
SET request.jwt.claims = '{"sub": "alice", "role": "regress_reader", "org": 7}';
SELECT rtsub.claims(), rtsub.claim('sub'), rtsub.claim('org'), rtsub.claim('missing');
RESET request.jwt.claims;

-- privileges: nothing for PUBLIC but the claims
SET ROLE regress_writer;
SELECT rtsub.claim('sub');
SELECT rtsub.publish('items');
SELECT rtsub.create_subscription('x', 'items');
SELECT * FROM rtsub.subscription;
SELECT * FROM rtsub.subscriptions;
INSERT INTO rtsub.publication (relid) VALUES ('nothing_ident');
RESET ROLE;
GRANT rtsub_admin TO regress_writer;
SET ROLE regress_writer;
SELECT rtsub.create_subscription('by_admin', 'items', roles => '{regress_reader, regress_writer}');
SELECT name, roles FROM rtsub.subscriptions WHERE name = 'by_admin';
SELECT rtsub.drop_subscription('by_admin');
INSERT INTO rtsub.publication (relid) VALUES ('nothing_ident');  -- only through functions
RESET ROLE;

-- validate() reports nothing while all is valid
SELECT * FROM rtsub.validate();

-- the event triggers keep definitions valid
ALTER TABLE items RENAME COLUMN owner TO owner_name;           -- used by a filter
ALTER TABLE items DROP COLUMN price;                           -- used by a filter
ALTER TABLE items ALTER COLUMN org_id TYPE text;               -- breaks org_id = params.org_id
ALTER TABLE items DROP CONSTRAINT items_pkey;                  -- published table needs a key
ALTER TABLE items REPLICA IDENTITY NOTHING;
ALTER TABLE items ADD COLUMN note text;                        -- harmless
ALTER TABLE items DROP COLUMN secret;                          -- used by nothing
ALTER TABLE nokey ADD COLUMN c int;                            -- no definitions
SELECT rtsub.drop_subscription('nope');
SELECT rtsub.drop_subscription('nope', if_exists => true);

-- unpublish
SELECT rtsub.unpublish('items');
SELECT rtsub.unpublish('nothing_ident');
SELECT rtsub.unpublish('nokey');
SELECT rtsub.unpublish('items', cascade => true);
SELECT count(*) FROM rtsub.subscription;
SELECT count(*) FROM rtsub.policy;

-- dropping a published table drops its definitions
SELECT rtsub.publish('items');
SELECT rtsub.create_subscription('again', 'items');
DROP TABLE items CASCADE;
SELECT count(*) AS publications, (SELECT count(*) FROM rtsub.subscription) AS subscriptions
  FROM rtsub.publication;

DROP TABLE nokey, nothing_ident, unlogged_t;
DROP SEQUENCE a_seq;
DROP EXTENSION rtsub;
DROP ROLE regress_reader;
DROP ROLE regress_writer;
