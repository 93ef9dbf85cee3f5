-- Filter and policy expressions: parsed and type-checked at definition
-- time with PostgreSQL's parser; every invalid expression fails with an
-- errcode, a message and a hint, and nothing is stored.
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION rtsub;
CREATE TABLE t (id int PRIMARY KEY, org_id int, tags text[], body jsonb, title text, n numeric);
CREATE FUNCTION stable_fn(int) RETURNS bool LANGUAGE sql STABLE AS 'SELECT $1 > 0';
CREATE FUNCTION volatile_fn(int) RETURNS bool LANGUAGE sql VOLATILE AS 'SELECT $1 > 0';
SELECT rtsub.publish('t');

-- accepted: real SQL expressions
SELECT rtsub.check_expression('t', 'org_id = 1');
SELECT rtsub.check_expression('t', 'org_id IN (1, 2, 3) OR title ILIKE ''%x%''');
SELECT rtsub.check_expression('t', 't.org_id = params.org AND tags && params.tags',
                              'filter', '{org,tags}', '{int,text[]}');
SELECT rtsub.check_expression('t', 'body @> ''{"public": true}'' AND coalesce(n, 0) BETWEEN 1 AND 10');
SELECT rtsub.check_expression('t', 'stable_fn(org_id) AND lower(title) = rtsub.claim(''sub'')');
SELECT rtsub.check_expression('t', 'CASE WHEN org_id > 5 THEN true ELSE id = 1 END');
SELECT rtsub.check_expression('t', 'true');
SELECT rtsub.check_expression('t', '''t''');   -- unknown literal coerced to boolean
SELECT rtsub.check_expression('t', 'org_id::text = (rtsub.claims() -> ''orgs'' ->> 0)', 'policy');

-- refused
SELECT rtsub.check_expression('t', 'org_id = ');                     -- syntax error
SELECT rtsub.check_expression('t', 'nope = 1');                      -- unknown column
SELECT rtsub.check_expression('t', 'other.id = 1');                  -- unknown table
SELECT rtsub.check_expression('t', 'org_id + 1');                    -- not boolean
SELECT rtsub.check_expression('t', 'title');                         -- not boolean
SELECT rtsub.check_expression('t', 'volatile_fn(org_id)');           -- volatile
SELECT rtsub.check_expression('t', 'random() < 0.5');                -- volatile
SELECT rtsub.check_expression('t', 'count(*) > 1');                  -- aggregate
SELECT rtsub.check_expression('t', 'row_number() OVER () = 1');      -- window function
SELECT rtsub.check_expression('t', 'generate_series(1, 2) = 1');     -- set-returning
SELECT rtsub.check_expression('t', 'id IN (SELECT 1)');              -- subquery
SELECT rtsub.check_expression('t', 'EXISTS (SELECT 1 FROM pg_class)');
SELECT rtsub.check_expression('t', 'xmin::text = ''1''');            -- system column
SELECT rtsub.check_expression('t', 'ctid IS NOT NULL');
SELECT rtsub.check_expression('t', 'org_id = params.org');           -- undeclared parameter
SELECT rtsub.check_expression('t', 'org_id = params.org', 'filter', '{org}', '{text}');  -- wrong type
SELECT rtsub.check_expression('t', 'org_id = params.org', 'filter', '{org}', '{}');     -- mismatch
SELECT rtsub.check_expression('t', 'org_id = params.org', 'policy', '{org}', '{int}');  -- policies have none
SELECT rtsub.check_expression('t', '');                              -- empty
SELECT rtsub.check_expression('t', '   ');
SELECT rtsub.check_expression('t', 'true', 'bogus');                 -- bad kind
SELECT rtsub.check_expression('t', NULL);
-- no clause can be smuggled in
SELECT rtsub.check_expression('t', 'true; DROP TABLE t');
SELECT rtsub.check_expression('t', 'true FROM pg_class');
SELECT rtsub.check_expression('t', 'true WHERE false');
SELECT rtsub.check_expression('t', 'true UNION SELECT false');
SELECT rtsub.check_expression('t', 'true ORDER BY 1');
SELECT rtsub.check_expression('t', 'true LIMIT 1');
SELECT rtsub.check_expression('t', 'true AS x');
SELECT rtsub.check_expression('t', '*');
SELECT rtsub.check_expression('t', 'true, false');
SELECT rtsub.check_expression('t', 'true) OR (true');   -- cannot close the wrapper
SELECT count(*) AS t_still_exists FROM t;

-- definitions use the same checks
SELECT rtsub.create_subscription('bad', 't', filter => 'count(*) > 1');
SELECT rtsub.create_policy('t', 'bad', 'id IN (SELECT 1)');
SELECT count(*) AS stored FROM rtsub.subscription;

DROP EXTENSION rtsub;
DROP TABLE t;
DROP FUNCTION stable_fn(int), volatile_fn(int);
