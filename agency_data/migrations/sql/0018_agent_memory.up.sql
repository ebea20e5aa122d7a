-- Agent memory (agency_data.memory): what agents remember, each memory's versions, and which
-- memories a consolidation summary replaced.
--
-- A memory's text and embedding live in an embedding collection (one row per memory, same id),
-- so that the collection's index, storage and embedder serve recall; this table holds what
-- recall scores besides similarity (kind, importance, when it happened, how often it was
-- recalled) and what scopes it (agent, subject). Its columns are what the change feed carries:
-- the text is not here, so an erased memory leaves no text in the feed.
CREATE TABLE memories (
    tenant_id         text NOT NULL DEFAULT 'default',
    -- Compared as the collection rows' ids are (bytewise), so that joins use either key.
    id                text COLLATE "C" NOT NULL,
    -- The embedding collection that holds its text and vector.
    collection        text NOT NULL,
    -- NULL: shared by every agent of the tenant.
    agent_id          text,
    kind              text NOT NULL
                      CONSTRAINT memories_kind_valid CHECK (length(kind) BETWEEN 1 AND 64),
    subject           text
                      CONSTRAINT memories_subject_valid CHECK (length(subject) BETWEEN 1 AND 512),
    importance        double precision NOT NULL
                      CONSTRAINT memories_importance_valid CHECK (importance BETWEEN 0 AND 1),
    -- When it happened or was learned: recency decays from here.
    happened_at       timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    version           integer NOT NULL DEFAULT 1,
    access_count      bigint NOT NULL DEFAULT 0,
    last_accessed_at  timestamptz,
    -- Soft deletion: the memory is no longer recalled; its versions stay in memory_history.
    forgotten_at      timestamptz,
    -- The consolidation summary that replaced it (forgotten then too).
    consolidated_into text COLLATE "C",
    PRIMARY KEY (tenant_id, id)
);
-- Deduplication looks up an agent's memories of one subject; listing and pruning walk an
-- agent's memories by age.
CREATE INDEX memories_subject ON memories (tenant_id, collection, agent_id, subject)
    WHERE forgotten_at IS NULL;
CREATE INDEX memories_age ON memories (tenant_id, collection, agent_id, happened_at)
    WHERE forgotten_at IS NULL;
ALTER TABLE memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE memories FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memories
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Every version of every memory, with its vector: history(memory_id), and recall as of a past
-- time (the version current then). A version is current from valid_from until valid_to (NULL:
-- still current); a forgetting is an entry of its own, without text.
CREATE TABLE memory_history (
    tenant_id   text NOT NULL DEFAULT 'default',
    memory_id   text COLLATE "C" NOT NULL,
    version     integer NOT NULL,
    event       text NOT NULL
                CONSTRAINT memory_history_event_valid
                CHECK (event IN ('created', 'updated', 'merged', 'consolidated', 'forgotten')),
    collection  text NOT NULL,
    agent_id    text,
    kind        text NOT NULL,
    subject     text,
    text        text,
    metadata    jsonb,
    importance  double precision,
    happened_at timestamptz,
    -- Any dimension: the collection fixes it.
    embedding   vector,
    valid_from  timestamptz NOT NULL DEFAULT clock_timestamp(),
    valid_to    timestamptz,
    actor       text NOT NULL DEFAULT coalesce(
                    nullif(current_setting('agency_data.actor', true), ''), current_user),
    PRIMARY KEY (tenant_id, memory_id, version),
    FOREIGN KEY (tenant_id, memory_id) REFERENCES memories (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX memory_history_valid ON memory_history (tenant_id, collection, valid_from);
ALTER TABLE memory_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_history
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- A consolidation summary and the memories it replaced.
CREATE TABLE memory_links (
    tenant_id   text NOT NULL DEFAULT 'default',
    summary_id  text COLLATE "C" NOT NULL,
    replaced_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, summary_id, replaced_id),
    FOREIGN KEY (tenant_id, summary_id) REFERENCES memories (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, replaced_id) REFERENCES memories (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX memory_links_replaced ON memory_links (tenant_id, replaced_id);
ALTER TABLE memory_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_links
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
