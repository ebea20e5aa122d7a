-- Tenancy enforced by PostgreSQL: every table with a tenant_id shows and accepts only the rows
-- of the tenant named by the transaction-local setting agency_data.tenant, for every role but
-- superusers and BYPASSRLS roles (FORCE: the tables' owner too). With no tenant set, no rows.
-- Tables made later carry the same two statements and policy in the migration (or the DDL) that
-- creates them; a test fails when one does not.

CREATE FUNCTION agency_data_current_tenant() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT current_setting('agency_data.tenant', true)
$$;

ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agents
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tasks
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- 0004's generic embeddings table, gone since 0006 unless a database kept or restored it
-- (its policy is made below, with the collections').
ALTER TABLE IF EXISTS embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE IF EXISTS embeddings FORCE ROW LEVEL SECURITY;

-- What every collection's table gets, made here and by the collections catalog alike (and
-- there for tables of your own migrations with a tenant_id).
CREATE FUNCTION agency_data_isolate_tenants(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s USING (tenant_id = agency_data_current_tenant()) '
        'WITH CHECK (tenant_id = agency_data_current_tenant())',
        target
    );
END;
$$;

DO $$
BEGIN
    IF to_regclass('embeddings') IS NOT NULL THEN
        PERFORM agency_data_isolate_tenants('embeddings');
    END IF;
    -- The collections made before this migration (later ones get it when they are created).
    PERFORM agency_data_isolate_tenants(table_name::regclass) FROM embedding_collections;
END;
$$;
