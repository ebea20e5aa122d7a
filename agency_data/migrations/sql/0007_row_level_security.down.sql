DO $$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT table_name::regclass FROM embedding_collections
        UNION ALL
        SELECT to_regclass('embeddings') WHERE to_regclass('embeddings') IS NOT NULL
    LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', target);
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', target);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', target);
    END LOOP;
END;
$$;

DROP POLICY tenant_isolation ON tasks;
ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tasks DISABLE ROW LEVEL SECURITY;

DROP POLICY tenant_isolation ON agents;
ALTER TABLE agents NO FORCE ROW LEVEL SECURITY;
ALTER TABLE agents DISABLE ROW LEVEL SECURITY;

DROP FUNCTION agency_data_isolate_tenants(regclass);
DROP FUNCTION agency_data_current_tenant();
