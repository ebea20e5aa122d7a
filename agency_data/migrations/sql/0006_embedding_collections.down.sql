DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', collection.table_name);
    END LOOP;
END;
$$;
DROP TABLE IF EXISTS embedding_collections;
DROP FUNCTION IF EXISTS agency_data_json_contains(jsonb, jsonb);
DROP FUNCTION IF EXISTS agency_data_json_timestamptz(jsonb);
DROP FUNCTION IF EXISTS agency_data_json_text(jsonb);
DROP FUNCTION IF EXISTS agency_data_json_number(jsonb);

CREATE TABLE embeddings (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text NOT NULL DEFAULT 'default'
                 CONSTRAINT embeddings_tenant_id_valid CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    collection   text NOT NULL DEFAULT 'default'
                 CONSTRAINT embeddings_collection_valid CHECK (collection ~ '^[a-z][a-z0-9_]{0,47}$'),
    entity_type  text NOT NULL
                 CONSTRAINT embeddings_entity_type_not_blank CHECK (btrim(entity_type) <> ''),
    entity_id    text NOT NULL,
    vector       vector NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}'
                 CONSTRAINT embeddings_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    content      text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX embeddings_entity ON embeddings (tenant_id, collection, entity_type, entity_id);
CREATE INDEX embeddings_metadata ON embeddings USING gin (metadata jsonb_path_ops);
ALTER TABLE embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE embeddings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON embeddings
    USING (tenant_id = current_setting('agency_data.tenant', true))
    WITH CHECK (tenant_id = current_setting('agency_data.tenant', true));
