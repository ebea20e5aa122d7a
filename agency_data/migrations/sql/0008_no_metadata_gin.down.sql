DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON %I USING gin (metadata jsonb_path_ops)',
            collection.table_name || '_metadata',
            collection.table_name
        );
    END LOOP;
END;
$$;
