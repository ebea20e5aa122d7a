-- Bytes under string keys, per tenant and namespace: the durable key-value store behind
-- LangChain's ByteStore (a parent-document retriever's documents, an embedding cache), kept
-- where the rest of a tenant's data is, under the same row-level security.
CREATE TABLE kv_items (
    tenant_id  text NOT NULL DEFAULT 'default',
    namespace  text NOT NULL
               CONSTRAINT kv_items_namespace_valid CHECK (length(namespace) BETWEEN 1 AND 200),
    -- Compared bytewise: prefix scans (LIKE 'prefix%') then use the primary key's index.
    key        text COLLATE "C" NOT NULL
               CONSTRAINT kv_items_key_valid CHECK (length(key) BETWEEN 1 AND 1024),
    value      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, namespace, key)
);
ALTER TABLE kv_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE kv_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kv_items
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
