/*
 * rtsub--0.1.sql
 *	  Catalogs and functions of rtsub 0.1: published tables, subscriptions,
 *	  permission policies, JWT claims, and the event triggers that keep the
 *	  definitions valid.  Released scripts are frozen: changes go into
 *	  upgrade scripts (rtsub--0.1--0.2.sql, ...).
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION rtsub" to load this file. \quit

/*
 * The admin role.  Roles are cluster-wide, so it is created only if missing
 * and survives DROP EXTENSION.  Members may define publications,
 * subscriptions and policies; nothing is granted to PUBLIC.
 */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'rtsub_admin') THEN
		CREATE ROLE rtsub_admin NOLOGIN;
	END IF;
END
$$;

-------------------------------------------------------------------------------
-- Catalogs
-------------------------------------------------------------------------------

-- A user catalog table, so that the output plugin may read it while decoding.
CREATE TABLE rtsub.publication (
	relid			pg_catalog.regclass PRIMARY KEY,
	via_root		pg_catalog.bool NOT NULL DEFAULT false,
	native_rls		pg_catalog.bool NOT NULL DEFAULT false,
	published_at	pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now()
) WITH (user_catalog_table = true);

COMMENT ON TABLE rtsub.publication IS
	'Tables whose changes rtsub streams; maintained by rtsub.publish() and rtsub.unpublish()';
COMMENT ON COLUMN rtsub.publication.relid IS 'the published table';
COMMENT ON COLUMN rtsub.publication.via_root IS
	'changes of partitions are reported under this partitioned table';
COMMENT ON COLUMN rtsub.publication.native_rls IS
	'also apply the table''s own row-level security policies for the subscriber''s role';
COMMENT ON COLUMN rtsub.publication.published_at IS 'when the table was published';

CREATE TABLE rtsub.subscription (
	name			pg_catalog.text PRIMARY KEY
		CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$'),
	relid			pg_catalog.regclass NOT NULL
		REFERENCES rtsub.publication (relid) ON DELETE CASCADE,
	filter			pg_catalog.text,
	columns			pg_catalog.name[],
	param_names		pg_catalog.text[] NOT NULL DEFAULT '{}',
	param_types		pg_catalog.regtype[] NOT NULL DEFAULT '{}',
	roles			pg_catalog.regrole[],
	created_at		pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (pg_catalog.cardinality(param_names) OPERATOR(pg_catalog.=) pg_catalog.cardinality(param_types))
);

COMMENT ON TABLE rtsub.subscription IS
	'Subscriptions clients may open; maintained by rtsub.create_subscription(), rtsub.alter_subscription() and rtsub.drop_subscription()';
COMMENT ON COLUMN rtsub.subscription.name IS 'the name clients subscribe with';
COMMENT ON COLUMN rtsub.subscription.relid IS 'the source table (published)';
COMMENT ON COLUMN rtsub.subscription.filter IS
	'boolean SQL expression over the row, parameters (params.<name>) and claims; NULL for every row';
COMMENT ON COLUMN rtsub.subscription.columns IS 'columns sent to clients; NULL for all';
COMMENT ON COLUMN rtsub.subscription.param_names IS 'names of the parameters clients pass';
COMMENT ON COLUMN rtsub.subscription.param_types IS 'types of the parameters, in the order of param_names';
COMMENT ON COLUMN rtsub.subscription.roles IS 'roles that may open the subscription; NULL for any role';
COMMENT ON COLUMN rtsub.subscription.created_at IS 'when the subscription was created';
COMMENT ON COLUMN rtsub.subscription.updated_at IS 'when the subscription was last changed';

CREATE TABLE rtsub.policy (
	relid			pg_catalog.regclass NOT NULL
		REFERENCES rtsub.publication (relid) ON DELETE CASCADE,
	name			pg_catalog.text NOT NULL,
	using_expr		pg_catalog.text NOT NULL,
	roles			pg_catalog.regrole[],
	permissive		pg_catalog.bool NOT NULL DEFAULT true,
	created_at		pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (relid, name)
);

COMMENT ON TABLE rtsub.policy IS
	'Row-level permission policies applied to every subscriber; maintained by rtsub.create_policy() and rtsub.drop_policy()';
COMMENT ON COLUMN rtsub.policy.relid IS 'the table the policy applies to';
COMMENT ON COLUMN rtsub.policy.name IS 'policy name, unique per table';
COMMENT ON COLUMN rtsub.policy.using_expr IS
	'boolean SQL expression over the row and the claims: a row is visible when it is true';
COMMENT ON COLUMN rtsub.policy.roles IS 'roles the policy applies to; NULL for every role';
COMMENT ON COLUMN rtsub.policy.permissive IS
	'permissive policies are combined with OR, restrictive ones with AND, as in PostgreSQL';
COMMENT ON COLUMN rtsub.policy.created_at IS 'when the policy was created';

SELECT pg_catalog.pg_extension_config_dump('rtsub.publication', '');
SELECT pg_catalog.pg_extension_config_dump('rtsub.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('rtsub.policy', '');

-------------------------------------------------------------------------------
-- C helpers
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.check_expression(
	tbl pg_catalog.regclass,
	expr pg_catalog.text,
	kind pg_catalog.text DEFAULT 'filter',
	param_names pg_catalog.text[] DEFAULT '{}',
	param_types pg_catalog.regtype[] DEFAULT '{}')
RETURNS void
AS 'MODULE_PATHNAME', 'rtsub_check_expression'
LANGUAGE C;

COMMENT ON FUNCTION rtsub.check_expression(pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.regtype[]) IS
	'parse and type-check a filter or policy expression over a table; raises the error a definition would get';

CREATE FUNCTION rtsub.invalidate_relation(tbl pg_catalog.regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'rtsub_invalidate_relation'
LANGUAGE C STRICT;

COMMENT ON FUNCTION rtsub.invalidate_relation(pg_catalog.regclass) IS
	'internal: tell decoding sessions to re-read the publication of a table';

-------------------------------------------------------------------------------
-- Internal helpers
-------------------------------------------------------------------------------

-- Resolve role names; NULL or {public} means any role.
CREATE FUNCTION rtsub._resolve_roles(roles pg_catalog.name[])
RETURNS pg_catalog.regrole[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r name;
	result regrole[] := '{}';
BEGIN
	IF roles IS NULL THEN
		RETURN NULL;
	END IF;
	IF cardinality(roles) = 0 THEN
		RAISE EXCEPTION 'roles must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Omit roles, or pass ''{public}'', to allow every role.';
	END IF;
	FOREACH r IN ARRAY roles LOOP
		IF r IS NULL THEN
			RAISE EXCEPTION 'roles must not contain nulls'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF r = 'public' THEN
			RETURN NULL;
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			RAISE EXCEPTION 'role "%" does not exist', r
				USING ERRCODE = 'undefined_object',
				      HINT = 'Create the role first, or pass ''{public}'' to allow every role.';
		END IF;
		result := array_append(result, r::text::regrole);
	END LOOP;
	RETURN result;
END
$$;

COMMENT ON FUNCTION rtsub._resolve_roles(pg_catalog.name[]) IS
	'internal: resolve role names for a definition; NULL for every role';

-- Resolve a {"name": "type"} object into parallel name and type arrays.
CREATE FUNCTION rtsub._resolve_params(params pg_catalog.jsonb,
	OUT names pg_catalog.text[], OUT types pg_catalog.regtype[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	v jsonb;
	t regtype;
BEGIN
	names := '{}';
	types := '{}';
	IF params IS NULL THEN
		RETURN;
	END IF;
	IF jsonb_typeof(params) <> 'object' THEN
		RAISE EXCEPTION 'params must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = format('Got a JSON %s.', jsonb_typeof(params)),
			      HINT = 'Map each parameter name to a type, for example ''{"org_id": "bigint"}''.';
	END IF;
	FOR k, v IN SELECT key, value FROM jsonb_each(params) ORDER BY key LOOP
		IF k !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
			RAISE EXCEPTION 'invalid parameter name "%"', k
				USING ERRCODE = 'invalid_name',
				      HINT = 'Parameter names are lower-case identifiers: letters, digits and underscores.';
		END IF;
		IF jsonb_typeof(v) <> 'string' THEN
			RAISE EXCEPTION 'type of parameter "%" must be a string', k
				USING ERRCODE = 'invalid_parameter_value',
				      HINT = 'Name a type, for example ''{"org_id": "bigint"}''.';
		END IF;
		BEGIN
			t := to_regtype(v #>> '{}');
		EXCEPTION WHEN others THEN
			t := NULL;
		END;
		IF t IS NULL THEN
			RAISE EXCEPTION 'type "%" of parameter "%" does not exist', v #>> '{}', k
				USING ERRCODE = 'undefined_object',
				      HINT = 'Use a type name such as text, bigint, uuid or text[].';
		END IF;
		IF (SELECT typtype = 'p' OR typisdefined = false FROM pg_type WHERE oid = t) THEN
			RAISE EXCEPTION 'parameter "%" cannot have pseudo-type %', k, t
				USING ERRCODE = 'invalid_parameter_value',
				      HINT = 'Use a concrete type such as text, bigint, uuid or text[].';
		END IF;
		names := array_append(names, k);
		types := array_append(types, t);
	END LOOP;
END
$$;

COMMENT ON FUNCTION rtsub._resolve_params(pg_catalog.jsonb) IS
	'internal: resolve a {"name": "type"} parameter declaration';

-- Check a column list against a table; NULL or {} means all columns.
CREATE FUNCTION rtsub._check_columns(tbl pg_catalog.regclass, columns pg_catalog.name[])
RETURNS pg_catalog.name[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c name;
	missing text;
BEGIN
	IF columns IS NULL OR cardinality(columns) = 0 THEN
		RETURN NULL;
	END IF;
	FOREACH c IN ARRAY columns LOOP
		IF c IS NULL THEN
			RAISE EXCEPTION 'columns must not contain nulls'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_attribute
					   WHERE attrelid = tbl AND attname = c
						 AND attnum > 0 AND NOT attisdropped) THEN
			RAISE EXCEPTION 'column "%" of table % does not exist', c, tbl
				USING ERRCODE = 'undefined_column',
				      HINT = format('Columns of %s: %s.', tbl,
						(SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
						 FROM pg_attribute
						 WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped));
		END IF;
	END LOOP;
	IF (SELECT count(*) <> count(DISTINCT x) FROM unnest(columns) AS x) THEN
		RAISE EXCEPTION 'column list contains duplicates'
			USING ERRCODE = 'duplicate_column',
			      HINT = 'Name every column once.';
	END IF;
	SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO missing
	FROM pg_index i
	JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
	WHERE i.indrelid = tbl AND i.indisprimary AND a.attname <> ALL (columns);
	IF missing IS NOT NULL THEN
		RAISE EXCEPTION 'column list of a subscription must include the primary key'
			USING ERRCODE = 'invalid_column_reference',
			      DETAIL = format('Missing: %s.', missing),
			      HINT = 'Clients identify rows by their primary key; add the key columns to the list.';
	END IF;
	RETURN columns;
END
$$;

COMMENT ON FUNCTION rtsub._check_columns(pg_catalog.regclass, pg_catalog.name[]) IS
	'internal: validate a subscription column list; NULL for all columns';

-- Check that a table can be published as it is now.
CREATE FUNCTION rtsub._check_publishable(tbl pg_catalog.regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	SELECT c.relkind, c.relreplident, c.relpersistence, n.nspname
	  INTO r
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = tbl;
	IF r.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION 'cannot publish "%"', tbl
			USING ERRCODE = 'wrong_object_type',
			      DETAIL = format('%s is a %s.', tbl, CASE r.relkind
					WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
					WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence'
					WHEN 'i' THEN 'index' WHEN 'I' THEN 'partitioned index'
					WHEN 'c' THEN 'composite type' ELSE 'relation of kind ' || r.relkind::text END),
			      HINT = 'Only tables and partitioned tables can be published.';
	END IF;
	IF r.nspname IN ('pg_catalog', 'information_schema', 'rtsub') OR r.nspname LIKE 'pg\_toast%' THEN
		RAISE EXCEPTION 'cannot publish system table %', tbl
			USING ERRCODE = 'insufficient_privilege',
			      HINT = 'Publish your application''s tables.';
	END IF;
	IF r.relpersistence <> 'p' THEN
		RAISE EXCEPTION 'cannot publish % table %',
				CASE r.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'temporary' END, tbl
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      DETAIL = 'Changes of unlogged and temporary tables are not written to WAL, so they cannot be streamed.',
			      HINT = 'Use a regular (logged) table.';
	END IF;
	IF r.relreplident = 'n' THEN
		RAISE EXCEPTION 'table % has REPLICA IDENTITY NOTHING', tbl
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      DETAIL = 'Updates and deletes of such a table do not say which row they changed.',
			      HINT = 'Set REPLICA IDENTITY DEFAULT with a primary key, or publish with replica_identity_full => true.';
	END IF;
	IF r.relreplident = 'd' AND NOT EXISTS (
			SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
		RAISE EXCEPTION 'table % has no primary key', tbl
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      DETAIL = 'Clients identify rows by their primary key, and updates and deletes of a table without one do not say which row they changed.',
			      HINT = 'Add a primary key, or publish with replica_identity_full => true to identify rows by all their columns.';
	END IF;
END
$$;

COMMENT ON FUNCTION rtsub._check_publishable(pg_catalog.regclass) IS
	'internal: raise an error if a table cannot be published';

-- Invalidate a table and all its partitions for decoding sessions.
CREATE FUNCTION rtsub._invalidate_tree(tbl pg_catalog.regclass)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	-- pg_partition_tree() returns nothing for a table that is not partitioned
	SELECT rtsub.invalidate_relation(r)
	  FROM (SELECT tbl UNION SELECT relid FROM pg_partition_tree(tbl)) AS t(r);
	SELECT NULL::void;
$$;

COMMENT ON FUNCTION rtsub._invalidate_tree(pg_catalog.regclass) IS
	'internal: invalidate a table and its partitions for decoding sessions';

-- Check that a stored subscription is still valid; raise the error if not.
CREATE FUNCTION rtsub._check_subscription(s rtsub.subscription)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM rtsub._check_columns(s.relid, s.columns);
	IF s.filter IS NOT NULL THEN
		PERFORM rtsub.check_expression(s.relid, s.filter, 'filter', s.param_names, s.param_types);
	END IF;
END
$$;

COMMENT ON FUNCTION rtsub._check_subscription(rtsub.subscription) IS
	'internal: re-validate a stored subscription';

-------------------------------------------------------------------------------
-- Publications
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.publish(
	tbl pg_catalog.regclass,
	via_root pg_catalog.bool DEFAULT false,
	native_rls pg_catalog.bool DEFAULT false,
	replica_identity_full pg_catalog.bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	part regclass;
BEGIN
	IF tbl IS NULL OR via_root IS NULL OR native_rls IS NULL OR replica_identity_full IS NULL THEN
		RAISE EXCEPTION 'arguments of rtsub.publish must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF via_root AND (SELECT relkind FROM pg_class WHERE oid = tbl) <> 'p' THEN
		RAISE EXCEPTION 'via_root applies only to partitioned tables'
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = format('%s is not partitioned.', tbl),
			      HINT = 'Publish the partitioned table with via_root => true, or omit via_root.';
	END IF;
	IF replica_identity_full THEN
		FOR part IN SELECT tbl UNION SELECT relid FROM pg_partition_tree(tbl) LOOP
			IF (SELECT relreplident FROM pg_class WHERE oid = part) <> 'f' THEN
				EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
			END IF;
		END LOOP;
	END IF;
	PERFORM rtsub._check_publishable(tbl);
	IF native_rls AND NOT (SELECT relrowsecurity FROM pg_class WHERE oid = tbl) THEN
		RAISE WARNING 'row-level security is not enabled on table %', tbl
			USING DETAIL = 'native_rls applies the table''s own policies, and it has none in force.',
			      HINT = format('Run ALTER TABLE %s ENABLE ROW LEVEL SECURITY and create policies.', tbl);
	END IF;

	-- (ON CONFLICT is not available on a user catalog table)
	UPDATE rtsub.publication p
	   SET via_root = publish.via_root, native_rls = publish.native_rls
	 WHERE p.relid = tbl;
	IF NOT FOUND THEN
		INSERT INTO rtsub.publication (relid, via_root, native_rls)
		VALUES (tbl, publish.via_root, publish.native_rls);
	END IF;

	PERFORM rtsub._invalidate_tree(tbl);
END
$$;

COMMENT ON FUNCTION rtsub.publish(pg_catalog.regclass, pg_catalog.bool, pg_catalog.bool, pg_catalog.bool) IS
	'publish a table''s changes, or change the options of a published table';

CREATE FUNCTION rtsub.unpublish(tbl pg_catalog.regclass, cascade pg_catalog.bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	nsubs bigint;
	npols bigint;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM rtsub.publication WHERE relid = tbl) THEN
		RAISE EXCEPTION 'table % is not published', tbl
			USING ERRCODE = 'undefined_object',
			      HINT = 'See rtsub.published_tables for the published tables.';
	END IF;
	SELECT count(*) INTO nsubs FROM rtsub.subscription WHERE relid = tbl;
	SELECT count(*) INTO npols FROM rtsub.policy WHERE relid = tbl;
	IF (nsubs > 0 OR npols > 0) AND NOT coalesce(unpublish.cascade, false) THEN
		RAISE EXCEPTION 'cannot unpublish table % because other objects depend on it', tbl
			USING ERRCODE = 'dependent_objects_still_exist',
			      DETAIL = format('%s subscription(s) and %s policy(ies) use it.', nsubs, npols),
			      HINT = 'Drop them first, or pass cascade => true to drop them too.';
	END IF;
	DELETE FROM rtsub.publication WHERE relid = tbl;
	PERFORM rtsub._invalidate_tree(tbl);
END
$$;

COMMENT ON FUNCTION rtsub.unpublish(pg_catalog.regclass, pg_catalog.bool) IS
	'stop publishing a table; with cascade, also drop its subscriptions and policies';

CREATE VIEW rtsub.published_tables AS
SELECT p.relid AS "table",
	   n.nspname AS schema_name,
	   c.relname AS table_name,
	   p.via_root,
	   p.native_rls,
	   CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full'
			WHEN 'i' THEN 'index' ELSE 'nothing' END AS replica_identity,
	   c.relrowsecurity AS rls_enabled,
	   (SELECT count(*) FROM rtsub.subscription s WHERE s.relid = p.relid) AS subscriptions,
	   (SELECT count(*) FROM rtsub.policy o WHERE o.relid = p.relid) AS policies,
	   p.published_at
FROM rtsub.publication p
JOIN pg_catalog.pg_class c ON c.oid = p.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

COMMENT ON VIEW rtsub.published_tables IS 'the published tables with their options';

-------------------------------------------------------------------------------
-- Subscriptions
-------------------------------------------------------------------------------

-- Raise an error unless tbl is published.
CREATE FUNCTION rtsub._require_published(tbl pg_catalog.regclass)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM rtsub.publication WHERE relid = tbl) THEN
		RAISE EXCEPTION 'table % is not published', tbl
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = format('Publish it first: SELECT rtsub.publish(%L);', tbl::text);
	END IF;
END
$$;

COMMENT ON FUNCTION rtsub._require_published(pg_catalog.regclass) IS
	'internal: raise an error unless a table is published';

CREATE FUNCTION rtsub.create_subscription(
	name pg_catalog.text,
	source pg_catalog.regclass,
	filter pg_catalog.text DEFAULT NULL,
	columns pg_catalog.name[] DEFAULT NULL,
	params pg_catalog.jsonb DEFAULT NULL,
	roles pg_catalog.name[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s rtsub.subscription;
	p record;
BEGIN
	IF create_subscription.name IS NULL
	   OR create_subscription.name !~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$' THEN
		RAISE EXCEPTION 'invalid subscription name "%"', create_subscription.name
			USING ERRCODE = 'invalid_name',
			      HINT = 'Start with a letter or underscore; then letters, digits, "_", ".", ":" or "-"; at most 128 characters.';
	END IF;
	IF EXISTS (SELECT 1 FROM rtsub.subscription x WHERE x.name = create_subscription.name) THEN
		RAISE EXCEPTION 'subscription "%" already exists', create_subscription.name
			USING ERRCODE = 'duplicate_object',
			      HINT = 'Change it with rtsub.alter_subscription(), or drop it first.';
	END IF;
	PERFORM rtsub._require_published(source);
	p := rtsub._resolve_params(params);

	s.name := create_subscription.name;
	s.relid := source;
	s.filter := create_subscription.filter;
	s.columns := rtsub._check_columns(source, create_subscription.columns);
	s.param_names := p.names;
	s.param_types := p.types;
	s.roles := rtsub._resolve_roles(create_subscription.roles);
	s.created_at := now();
	s.updated_at := now();
	PERFORM rtsub._check_subscription(s);

	INSERT INTO rtsub.subscription SELECT s.*;
END
$$;

COMMENT ON FUNCTION rtsub.create_subscription(pg_catalog.text, pg_catalog.regclass, pg_catalog.text, pg_catalog.name[], pg_catalog.jsonb, pg_catalog.name[]) IS
	'define a subscription: source table, filter over the row, parameters and claims, columns, and the roles that may open it';

CREATE FUNCTION rtsub.alter_subscription(
	name pg_catalog.text,
	filter pg_catalog.text DEFAULT NULL,
	columns pg_catalog.name[] DEFAULT NULL,
	params pg_catalog.jsonb DEFAULT NULL,
	roles pg_catalog.name[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s rtsub.subscription;
	p record;
BEGIN
	SELECT * INTO s FROM rtsub.subscription x WHERE x.name = alter_subscription.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'subscription "%" does not exist', alter_subscription.name
			USING ERRCODE = 'undefined_object',
			      HINT = 'See rtsub.subscriptions for the defined subscriptions.';
	END IF;
	IF alter_subscription.filter IS NOT NULL THEN
		s.filter := alter_subscription.filter;
	END IF;
	IF alter_subscription.columns IS NOT NULL THEN
		s.columns := rtsub._check_columns(s.relid, alter_subscription.columns);
	END IF;
	IF params IS NOT NULL THEN
		p := rtsub._resolve_params(params);
		s.param_names := p.names;
		s.param_types := p.types;
	END IF;
	IF alter_subscription.roles IS NOT NULL THEN
		s.roles := rtsub._resolve_roles(alter_subscription.roles);
	END IF;
	s.updated_at := now();
	PERFORM rtsub._check_subscription(s);

	UPDATE rtsub.subscription x
	   SET filter = s.filter, columns = s.columns, param_names = s.param_names,
		   param_types = s.param_types, roles = s.roles, updated_at = s.updated_at
	 WHERE x.name = s.name;
END
$$;

COMMENT ON FUNCTION rtsub.alter_subscription(pg_catalog.text, pg_catalog.text, pg_catalog.name[], pg_catalog.jsonb, pg_catalog.name[]) IS
	'change a subscription; arguments left NULL keep their value';

CREATE FUNCTION rtsub.drop_subscription(name pg_catalog.text, if_exists pg_catalog.bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM rtsub.subscription x WHERE x.name = drop_subscription.name;
	IF NOT FOUND THEN
		IF if_exists THEN
			RAISE NOTICE 'subscription "%" does not exist, skipping', drop_subscription.name;
		ELSE
			RAISE EXCEPTION 'subscription "%" does not exist', drop_subscription.name
				USING ERRCODE = 'undefined_object',
				      HINT = 'Pass if_exists => true to ignore a missing subscription.';
		END IF;
	END IF;
END
$$;

COMMENT ON FUNCTION rtsub.drop_subscription(pg_catalog.text, pg_catalog.bool) IS
	'drop a subscription';

CREATE VIEW rtsub.subscriptions AS
SELECT s.name,
	   s.relid AS "table",
	   s.filter,
	   s.columns,
	   (SELECT pg_catalog.jsonb_object_agg(n, t::text)
		  FROM unnest(s.param_names, s.param_types) AS u(n, t)) AS params,
	   coalesce(s.roles::text[], '{public}') AS roles,
	   s.created_at,
	   s.updated_at
FROM rtsub.subscription s;

COMMENT ON VIEW rtsub.subscriptions IS 'the defined subscriptions, in readable form';

-------------------------------------------------------------------------------
-- Policies
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.create_policy(
	tbl pg_catalog.regclass,
	name pg_catalog.text,
	using_expr pg_catalog.text,
	roles pg_catalog.name[] DEFAULT NULL,
	permissive pg_catalog.bool DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM rtsub._require_published(tbl);
	IF create_policy.name IS NULL OR create_policy.name = '' THEN
		RAISE EXCEPTION 'policy name must not be empty'
			USING ERRCODE = 'invalid_name';
	END IF;
	IF using_expr IS NULL THEN
		RAISE EXCEPTION 'policy expression must not be null'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Pass a boolean expression such as "owner_id = rtsub.claim(''sub'')::bigint".';
	END IF;
	IF EXISTS (SELECT 1 FROM rtsub.policy p WHERE p.relid = tbl AND p.name = create_policy.name) THEN
		RAISE EXCEPTION 'policy "%" for table % already exists', create_policy.name, tbl
			USING ERRCODE = 'duplicate_object',
			      HINT = 'Drop it first with rtsub.drop_policy().';
	END IF;
	PERFORM rtsub.check_expression(tbl, using_expr, 'policy');

	INSERT INTO rtsub.policy (relid, name, using_expr, roles, permissive)
	VALUES (tbl, create_policy.name, using_expr,
			rtsub._resolve_roles(create_policy.roles),
			coalesce(create_policy.permissive, true));
END
$$;

COMMENT ON FUNCTION rtsub.create_policy(pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.name[], pg_catalog.bool) IS
	'define a row-level permission policy over the row and the JWT claims, like an RLS USING clause';

CREATE FUNCTION rtsub.drop_policy(tbl pg_catalog.regclass, name pg_catalog.text,
	if_exists pg_catalog.bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM rtsub.policy p WHERE p.relid = tbl AND p.name = drop_policy.name;
	IF NOT FOUND THEN
		IF if_exists THEN
			RAISE NOTICE 'policy "%" for table % does not exist, skipping', drop_policy.name, tbl;
		ELSE
			RAISE EXCEPTION 'policy "%" for table % does not exist', drop_policy.name, tbl
				USING ERRCODE = 'undefined_object',
				      HINT = 'See rtsub.policies for the defined policies.';
		END IF;
	END IF;
END
$$;

COMMENT ON FUNCTION rtsub.drop_policy(pg_catalog.regclass, pg_catalog.text, pg_catalog.bool) IS
	'drop a row-level permission policy';

CREATE VIEW rtsub.policies AS
SELECT p.relid AS "table",
	   p.name,
	   p.using_expr,
	   coalesce(p.roles::text[], '{public}') AS roles,
	   p.permissive,
	   p.created_at
FROM rtsub.policy p;

COMMENT ON VIEW rtsub.policies IS 'the defined permission policies, in readable form';

-------------------------------------------------------------------------------
-- Claims
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.claims()
RETURNS pg_catalog.jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

COMMENT ON FUNCTION rtsub.claims() IS
	'the JWT claims of the subscriber being evaluated, as jsonb (setting request.jwt.claims, as in PostgREST)';

CREATE FUNCTION rtsub.claim(name pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT rtsub.claims() ->> name
$$;

COMMENT ON FUNCTION rtsub.claim(pg_catalog.text) IS
	'one JWT claim of the subscriber being evaluated, as text; NULL if absent';

-------------------------------------------------------------------------------
-- Keeping definitions valid
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.validate()
RETURNS TABLE (object_type pg_catalog.text, object_name pg_catalog.text, error pg_catalog.text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s rtsub.subscription;
	p rtsub.policy;
BEGIN
	FOR s IN SELECT * FROM rtsub.subscription ORDER BY name LOOP
		BEGIN
			PERFORM rtsub._check_subscription(s);
		EXCEPTION WHEN others THEN
			object_type := 'subscription';
			object_name := s.name;
			error := SQLERRM;
			RETURN NEXT;
		END;
	END LOOP;
	FOR p IN SELECT * FROM rtsub.policy ORDER BY relid::text, name LOOP
		BEGIN
			PERFORM rtsub.check_expression(p.relid, p.using_expr, 'policy');
		EXCEPTION WHEN others THEN
			object_type := 'policy';
			object_name := p.relid::text || '.' || p.name;
			error := SQLERRM;
			RETURN NEXT;
		END;
	END LOOP;
END
$$;

COMMENT ON FUNCTION rtsub.validate() IS
	're-check every subscription and policy; returns the invalid ones with their error';

-- ALTER TABLE on a published table: refuse changes that break definitions.
CREATE FUNCTION rtsub._on_ddl_command_end()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cmd record;
	s rtsub.subscription;
	p rtsub.policy;
BEGIN
	FOR cmd IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
			   WHERE classid = 'pg_catalog.pg_class'::regclass
				 AND objid IN (SELECT relid FROM rtsub.publication) LOOP
		BEGIN
			PERFORM rtsub._check_publishable(cmd.objid::regclass);
		EXCEPTION WHEN others THEN
			RAISE EXCEPTION 'published table % can no longer be streamed: %', cmd.objid::regclass, SQLERRM
				USING ERRCODE = 'dependent_objects_still_exist',
				      HINT = 'Unpublish it first with rtsub.unpublish(), or keep a primary key or replica identity.';
		END;
		FOR s IN SELECT * FROM rtsub.subscription WHERE relid = cmd.objid LOOP
			BEGIN
				PERFORM rtsub._check_subscription(s);
			EXCEPTION WHEN others THEN
				RAISE EXCEPTION 'this change to table % breaks subscription "%": %', cmd.objid::regclass, s.name, SQLERRM
					USING ERRCODE = 'dependent_objects_still_exist',
					      HINT = 'Change or drop the subscription first with rtsub.alter_subscription() or rtsub.drop_subscription().';
			END;
		END LOOP;
		FOR p IN SELECT * FROM rtsub.policy WHERE relid = cmd.objid LOOP
			BEGIN
				PERFORM rtsub.check_expression(p.relid, p.using_expr, 'policy');
			EXCEPTION WHEN others THEN
				RAISE EXCEPTION 'this change to table % breaks policy "%": %', cmd.objid::regclass, p.name, SQLERRM
					USING ERRCODE = 'dependent_objects_still_exist',
					      HINT = 'Drop the policy first with rtsub.drop_policy(), then create it again.';
			END;
		END LOOP;
	END LOOP;
END
$$;

COMMENT ON FUNCTION rtsub._on_ddl_command_end() IS
	'internal: event trigger refusing ALTER TABLE changes that break rtsub definitions';

-- DROP of a published table: forget its publication, subscriptions, policies.
CREATE FUNCTION rtsub._on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d record;
BEGIN
	FOR d IN SELECT objid, object_identity FROM pg_event_trigger_dropped_objects()
			 WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0
			   AND objid IN (SELECT relid FROM rtsub.publication) LOOP
		DELETE FROM rtsub.publication WHERE relid = d.objid;
		RAISE NOTICE 'rtsub: dropped table % is no longer published; its subscriptions and policies were dropped', d.object_identity;
	END LOOP;
END
$$;

COMMENT ON FUNCTION rtsub._on_sql_drop() IS
	'internal: event trigger removing the rtsub definitions of dropped tables';

CREATE EVENT TRIGGER rtsub_ddl_command_end ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION rtsub._on_ddl_command_end();

CREATE EVENT TRIGGER rtsub_sql_drop ON sql_drop
	EXECUTE FUNCTION rtsub._on_sql_drop();

-------------------------------------------------------------------------------
-- Server diagnostics
-------------------------------------------------------------------------------

CREATE FUNCTION rtsub.verify_token(token pg_catalog.text)
RETURNS pg_catalog.jsonb
AS 'MODULE_PATHNAME', 'rtsub_verify_token'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION rtsub.verify_token(pg_catalog.text) IS
	'verify a JWT as the rtsub server does, with this session''s rtsub.jwt_* settings; returns its claims or raises SQLSTATE 28000 with the error code in the detail';

CREATE FUNCTION rtsub.server_status(
	OUT pid pg_catalog.int4, OUT state pg_catalog.text, OUT port pg_catalog.int4,
	OUT started_at pg_catalog.timestamptz, OUT http_requests pg_catalog.int8,
	OUT connections_accepted pg_catalog.int8, OUT connections_rejected pg_catalog.int8,
	OUT bytes_sent pg_catalog.int8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'rtsub_server_status'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION rtsub.server_status() IS
	'state and counters of the rtsub server worker (one row); state is stopped, starting, running, stopping or disabled';

CREATE FUNCTION rtsub.wait_until_running(timeout_ms pg_catalog.int4 DEFAULT 10000)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'rtsub_wait_until_running'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION rtsub.wait_until_running(pg_catalog.int4) IS
	'wait until the rtsub server listens; false after timeout_ms, or at once when the server is disabled';

CREATE TABLE rtsub.audit_log (
	id pg_catalog.int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at pg_catalog.timestamptz NOT NULL,
	event pg_catalog.text NOT NULL,
	detail pg_catalog.text NOT NULL
);

COMMENT ON TABLE rtsub.audit_log IS
	'audit trail of the rtsub server when rtsub.audit_table is on: connections accepted or refused, tokens rejected, subscribes granted or denied, slow consumers closed; event is the kind, detail the whole line (as rtsub.audit_log writes it to the server log)';

CREATE INDEX audit_log_at ON rtsub.audit_log (at);

CREATE FUNCTION rtsub._server_sessions()
RETURNS pg_catalog.jsonb
AS 'MODULE_PATHNAME', 'rtsub_server_sessions'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION rtsub._server_sessions() IS
	'internal: the rtsub server''s sessions and their subscriptions as jsonb, described by the server worker on request (behind rtsub.connections and rtsub.active_subscriptions)';

CREATE VIEW rtsub.connections AS
SELECT c.id, c.transport, c.format, c.remote_addr, c."user", c.role,
	c.connected_at, pg_catalog.to_timestamp(c.token_expires_at) AS token_expires_at,
	c.state, c.subscriptions, c.messages_sent, c.bytes_sent,
	c.queue_bytes, c.queue_messages
FROM pg_catalog.jsonb_to_recordset(rtsub._server_sessions()) AS c(
	id pg_catalog.int8, transport pg_catalog.text, format pg_catalog.text,
	remote_addr pg_catalog.text, "user" pg_catalog.text, role pg_catalog.text,
	connected_at pg_catalog.timestamptz, token_expires_at pg_catalog.float8,
	state pg_catalog.text, subscriptions pg_catalog.int4,
	messages_sent pg_catalog.int8, bytes_sent pg_catalog.int8,
	queue_bytes pg_catalog.int8, queue_messages pg_catalog.int4);

COMMENT ON VIEW rtsub.connections IS
	'clients of the rtsub server right now: transport (websocket or sse), format, address, the token''s user (sub) and role, subscriptions, messages and bytes sent, send queue';

CREATE VIEW rtsub.active_subscriptions AS
SELECT (c ->> 'id')::pg_catalog.int8 AS connection_id,
	s.id, s.subscription, s.table_oid::pg_catalog.regclass AS "table",
	c ->> 'role' AS role, c ->> 'user' AS "user",
	s.state, s.position::pg_catalog.text AS position, s.messages_sent,
	s.memory_bytes
FROM pg_catalog.jsonb_array_elements(rtsub._server_sessions()) AS c,
	pg_catalog.jsonb_to_recordset(c -> 'subs') AS s(
		id pg_catalog.text, subscription pg_catalog.text,
		table_oid pg_catalog.oid, state pg_catalog.text,
		position pg_catalog.text, messages_sent pg_catalog.int8,
		memory_bytes pg_catalog.int8);

COMMENT ON VIEW rtsub.active_subscriptions IS
	'subscriptions clients of the rtsub server have open: connection, client id, definition, table, state (snapshot, catching_up, live, failed, ended), position in the stream, change messages sent, memory of its compiled state';

CREATE FUNCTION rtsub.stats(
	OUT changes_decoded pg_catalog.int8, OUT changes_evaluated pg_catalog.int8,
	OUT changes_delivered pg_catalog.int8, OUT messages_sent pg_catalog.int8,
	OUT bytes_sent pg_catalog.int8, OUT lag_bytes pg_catalog.int8,
	OUT decoded_upto pg_catalog.pg_lsn, OUT window_start pg_catalog.pg_lsn,
	OUT slot_confirmed pg_catalog.pg_lsn, OUT window_bytes pg_catalog.int8,
	OUT snapshots_started pg_catalog.int8, OUT resets_sent pg_catalog.int8)
RETURNS record
AS 'MODULE_PATHNAME', 'rtsub_stats'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION rtsub.stats() IS
	'rtsub server counters since the postmaster started: changes decoded, evaluated (change x subscription) and delivered, messages and bytes sent, lag of decoding behind flushed WAL in bytes, the resume window (start, confirmed slot position, memory), snapshots started and resets sent';

CREATE FUNCTION rtsub.parse_client_message(message pg_catalog.bytea, format pg_catalog.text DEFAULT 'json')
RETURNS pg_catalog.jsonb
AS 'MODULE_PATHNAME', 'rtsub_parse_client_message_sql'
LANGUAGE C STRICT;

COMMENT ON FUNCTION rtsub.parse_client_message(pg_catalog.bytea, pg_catalog.text) IS
	'diagnostics: parse a client protocol message (json or msgpack) as the server would; returns its fields, or {"error", "detail"[, "id"]}';

CREATE FUNCTION rtsub._test_server_messages(format pg_catalog.text)
RETURNS SETOF pg_catalog.bytea
AS 'MODULE_PATHNAME', 'rtsub_test_server_messages'
LANGUAGE C STRICT;

COMMENT ON FUNCTION rtsub._test_server_messages(pg_catalog.text) IS
	'internal: one of each server protocol message built with fixed arguments, for tests';

-------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC but reading one's own claims
-------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA rtsub FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA rtsub FROM PUBLIC;

-- Subscriber roles evaluate policies (and their own RLS policies) that read claims.
GRANT USAGE ON SCHEMA rtsub TO PUBLIC;
GRANT EXECUTE ON FUNCTION rtsub.claims(), rtsub.claim(pg_catalog.text) TO PUBLIC;

GRANT SELECT ON rtsub.publication, rtsub.subscription, rtsub.policy,
	rtsub.published_tables, rtsub.subscriptions, rtsub.policies,
	rtsub.connections, rtsub.active_subscriptions, rtsub.audit_log TO rtsub_admin;
GRANT DELETE ON rtsub.audit_log TO rtsub_admin;
GRANT EXECUTE ON FUNCTION
	rtsub.publish(pg_catalog.regclass, pg_catalog.bool, pg_catalog.bool, pg_catalog.bool),
	rtsub.unpublish(pg_catalog.regclass, pg_catalog.bool),
	rtsub.create_subscription(pg_catalog.text, pg_catalog.regclass, pg_catalog.text, pg_catalog.name[], pg_catalog.jsonb, pg_catalog.name[]),
	rtsub.alter_subscription(pg_catalog.text, pg_catalog.text, pg_catalog.name[], pg_catalog.jsonb, pg_catalog.name[]),
	rtsub.drop_subscription(pg_catalog.text, pg_catalog.bool),
	rtsub.create_policy(pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.name[], pg_catalog.bool),
	rtsub.drop_policy(pg_catalog.regclass, pg_catalog.text, pg_catalog.bool),
	rtsub.check_expression(pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.regtype[]),
	rtsub.validate(),
	rtsub.verify_token(pg_catalog.text),
	rtsub.server_status(),
	rtsub.wait_until_running(pg_catalog.int4),
	rtsub._server_sessions(),
	rtsub.stats(),
	rtsub.parse_client_message(pg_catalog.bytea, pg_catalog.text)
TO rtsub_admin;
