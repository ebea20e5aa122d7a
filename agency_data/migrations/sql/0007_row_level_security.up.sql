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

-- The collections made before this migration (later ones get it when they are created).
DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', collection.table_name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', collection.table_name);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = agency_data_current_tenant()) '
            'WITH CHECK (tenant_id = agency_data_current_tenant())',
            collection.table_name
        );
    END LOOP;
END;
$$;
