-- replaces: 5e180c567bd2b0dd0d8e5fcb2aa142c79b943867d979604c434f71053ee9343c
-- (this file before its table got row-level security below; 0006 drops the table and 0007
-- isolates it should it still exist, so databases that ran the old text need nothing more)
-- The vector column carries no fixed dimension: each collection fixes its own, and its
-- indexes are built per collection on a cast of this column (see the embedding store).
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

-- Each tenant sees and writes only its own rows (see 0007, which names the setting's reader
-- agency_data_current_tenant() for every later table).
ALTER TABLE embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE embeddings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON embeddings
    USING (tenant_id = current_setting('agency_data.tenant', true))
    WITH CHECK (tenant_id = current_setting('agency_data.tenant', true));
