-- LangGraph's long-term memory store (agency_data.integrations.langgraph): one row per item of
-- each named store, in each tenant. The namespace is kept as its labels joined by dots (LangGraph
-- forbids dots in labels, so the text is unambiguous) and compared bytewise (COLLATE "C"), so a
-- namespace prefix is one range of the primary key: text comparisons are leakproof, so the index
-- still serves it under row-level security. A vector search goes through the store's collection
-- (a collection named after the store), whose embeddings the store keeps in step with the items.
CREATE TABLE langgraph_store (
    tenant_id   text NOT NULL DEFAULT 'default'
                CONSTRAINT langgraph_store_tenant_id_valid
                CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    store       text COLLATE "C" NOT NULL
                CONSTRAINT langgraph_store_store_valid CHECK (store ~ '^[a-z][a-z0-9_]{0,47}$'),
    prefix      text COLLATE "C" NOT NULL
                CONSTRAINT langgraph_store_prefix_valid
                CHECK (prefix <> '' AND octet_length(prefix) <= 1024),
    key         text COLLATE "C" NOT NULL
                CONSTRAINT langgraph_store_key_valid CHECK (octet_length(key) <= 1024),
    value       jsonb NOT NULL
                CONSTRAINT langgraph_store_value_object CHECK (jsonb_typeof(value) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- An item with a TTL expires ttl_minutes after it was last written (or read, when reads
    -- refresh it); the sweeper deletes what has expired.
    ttl_minutes double precision CONSTRAINT langgraph_store_ttl_positive CHECK (ttl_minutes > 0),
    expires_at  timestamptz,
    CONSTRAINT langgraph_store_ttl_whole CHECK ((ttl_minutes IS NULL) = (expires_at IS NULL)),
    -- The ids of the item's embeddings in the store's collection: a write or a delete returns
    -- them, and the ones no longer wanted are deleted by primary key.
    embedding_ids text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, store, prefix, key)
);

-- The sweeper's scan: only the items that can expire.
CREATE INDEX langgraph_store_expiry ON langgraph_store (tenant_id, store, expires_at)
    WHERE expires_at IS NOT NULL;

ALTER TABLE langgraph_store ENABLE ROW LEVEL SECURITY;
ALTER TABLE langgraph_store FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON langgraph_store
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
