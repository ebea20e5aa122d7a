DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', collection.table_name);
        EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', collection.table_name);
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', collection.table_name);
    END LOOP;
END;
$$;

DROP POLICY tenant_isolation ON tasks;
ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tasks DISABLE ROW LEVEL SECURITY;

DROP POLICY tenant_isolation ON agents;
ALTER TABLE agents NO FORCE ROW LEVEL SECURITY;
ALTER TABLE agents DISABLE ROW LEVEL SECURITY;

DROP FUNCTION agency_data_current_tenant();
