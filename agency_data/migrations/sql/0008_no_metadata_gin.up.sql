-- Under row-level security PostgreSQL lets a query use an index only through leakproof
-- operators, and jsonb's @> is not one: the application role's filtered searches never used a
-- collection's GIN index on metadata, which only slowed every write. Collections made from now
-- on have none (vectors/catalog.py); this drops the ones made before.
DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', collection.table_name || '_metadata');
    END LOOP;
END;
$$;
