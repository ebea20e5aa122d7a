-- The temporal knowledge graph of agent memory (agency_data.memory.graph): entities, the
-- relations between them, and which memories mention which entities.
--
-- pg_trgm splits entity names into trigrams for find_entities. It is trusted (PostgreSQL 13
-- and later), so the owner can create it in a database it owns; the role setup creates it
-- beforehand, as it does pgvector, for an owner that does not own the database.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE memory_entities (
    tenant_id  text NOT NULL DEFAULT 'default',
    id         text NOT NULL DEFAULT gen_random_uuid()::text,
    name       text NOT NULL
               CONSTRAINT memory_entities_name_valid CHECK (length(name) BETWEEN 1 AND 512),
    type       text NOT NULL
               CONSTRAINT memory_entities_type_valid CHECK (length(type) BETWEEN 1 AND 64),
    properties jsonb NOT NULL DEFAULT '{}',
    -- Any dimension, or none: entities are few beside memories, so their search is an exact
    -- scan of the vectors of the dimension asked for.
    embedding  vector,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, id)
);
-- One entity per type and name, whatever the name's case: upsert_entity finds it again.
CREATE UNIQUE INDEX memory_entities_identity ON memory_entities (tenant_id, type, lower(name));
CREATE TRIGGER memory_entities_touch_updated_at BEFORE UPDATE ON memory_entities
    FOR EACH ROW EXECUTE FUNCTION agency_data_touch_updated_at();
ALTER TABLE memory_entities ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_entities FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_entities
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Each entity's name as trigrams (pg_trgm's, of the lowered name), kept by the triggers
-- below, for find_entities. Not a GIN index on the name: under row-level security PostgreSQL
-- lets a condition use an index only through a leakproof operator, and pg_trgm's are not (a
-- search of the application role scanned every entity); text equality is, so a search looks
-- the name's trigrams up here by key and counts the shared ones, which gives pg_trgm's own
-- similarity (shared / (trigrams of the name + of the entity - shared)).
CREATE TABLE memory_entity_trigrams (
    tenant_id text NOT NULL DEFAULT 'default',
    trigram   text NOT NULL,
    entity_id text NOT NULL,
    PRIMARY KEY (tenant_id, trigram, entity_id),
    FOREIGN KEY (tenant_id, entity_id) REFERENCES memory_entities (tenant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX memory_entity_trigrams_entity ON memory_entity_trigrams (tenant_id, entity_id);
ALTER TABLE memory_entity_trigrams ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_entity_trigrams FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_entity_trigrams
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Once per statement (a bulk load of entities is one INSERT of their trigrams).
CREATE FUNCTION agency_data_entity_trigrams_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_entity_trigrams (tenant_id, trigram, entity_id)
    SELECT a.tenant_id, t.trigram, a.id
    FROM added a CROSS JOIN LATERAL unnest(show_trgm(lower(a.name))) AS t(trigram);
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_entities_trigrams_added AFTER INSERT ON memory_entities
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_entity_trigrams_added();

-- The layer never renames an entity (upsert_entity keeps the first spelling); SQL of one's
-- own may.
CREATE FUNCTION agency_data_entity_trigrams_renamed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM memory_entity_trigrams g
    USING before_rows o JOIN after_rows n ON n.tenant_id = o.tenant_id AND n.id = o.id
    WHERE n.name IS DISTINCT FROM o.name AND g.tenant_id = o.tenant_id AND g.entity_id = o.id;
    INSERT INTO memory_entity_trigrams (tenant_id, trigram, entity_id)
    SELECT n.tenant_id, t.trigram, n.id
    FROM before_rows o JOIN after_rows n ON n.tenant_id = o.tenant_id AND n.id = o.id
    CROSS JOIN LATERAL unnest(show_trgm(lower(n.name))) AS t(trigram)
    WHERE n.name IS DISTINCT FROM o.name;
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_entities_trigrams_renamed AFTER UPDATE ON memory_entities
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_entity_trigrams_renamed();

-- Facts: source -relation-> target, bi-temporal. Valid time [valid_from, valid_to) is when the
-- fact was true in the world (valid_to NULL: still true); transaction time [recorded_at,
-- invalidated_at) is when this row was what we believed (invalidated_at NULL: we still do).
-- A row's times never change but for invalidated_at, set once: a fact whose interval changes
-- (ended by a newer fact, by invalidate(), or merged with the same fact stated again) gets a
-- new version (same id, version + 1) and the old version is invalidated, so that the graph
-- answers both "what was true at T" and "what did we believe at T".
CREATE TABLE memory_relations (
    tenant_id      text NOT NULL DEFAULT 'default',
    id             text NOT NULL,
    version        integer NOT NULL DEFAULT 1,
    source_id      text NOT NULL,
    relation       text NOT NULL
                   CONSTRAINT memory_relations_relation_valid
                   CHECK (length(relation) BETWEEN 1 AND 128),
    target_id      text NOT NULL,
    properties     jsonb NOT NULL DEFAULT '{}',
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    invalidated_at timestamptz,
    -- The relation whose statement ended this version (NULL: invalidate(), or still current).
    invalidated_by text,
    -- The memory it was learned from: erasing that memory erases the fact, every version.
    -- Compared bytewise, as memory ids are.
    source_memory  text COLLATE "C",
    PRIMARY KEY (tenant_id, id, version),
    CONSTRAINT memory_relations_valid_to_valid CHECK (valid_to IS NULL OR valid_to > valid_from),
    FOREIGN KEY (tenant_id, source_id) REFERENCES memory_entities (tenant_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, target_id) REFERENCES memory_entities (tenant_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, source_memory) REFERENCES memories (tenant_id, id) ON DELETE CASCADE
);
-- Out- and in-edges of an entity, with all a walk of the facts believed now reads (neighbours,
-- paths, relations): index-only scans, the time and belief conditions checked in the index.
-- Full, not partial on invalidated_at IS NULL: the cascades from a deleted entity and reads as
-- known at a past time need every version, and beside a full index for those the planner
-- walked the narrower full one rather than a partial covering one. Measured on 100k relations,
-- this pair walks as fast as partial covering indexes beside plain ones, with two indexes to
-- write instead of four. A superseded version costs an entry, skipped inside the index.
CREATE INDEX memory_relations_out ON memory_relations (tenant_id, source_id, relation)
    INCLUDE (target_id, valid_from, valid_to, invalidated_at, id, version);
CREATE INDEX memory_relations_in ON memory_relations (tenant_id, target_id, relation)
    INCLUDE (source_id, valid_from, valid_to, invalidated_at, id, version);
-- What erasing a memory deletes.
CREATE INDEX memory_relations_memory ON memory_relations (tenant_id, source_memory)
    WHERE source_memory IS NOT NULL;
ALTER TABLE memory_relations ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_relations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_relations
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Which entities a memory mentions (recall(expand=True) reads them with the facts among them).
CREATE TABLE memory_mentions (
    tenant_id text NOT NULL DEFAULT 'default',
    memory_id text COLLATE "C" NOT NULL,
    entity_id text NOT NULL,
    PRIMARY KEY (tenant_id, memory_id, entity_id),
    FOREIGN KEY (tenant_id, memory_id) REFERENCES memories (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, entity_id) REFERENCES memory_entities (tenant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX memory_mentions_entity ON memory_mentions (tenant_id, entity_id);
ALTER TABLE memory_mentions ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_mentions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_mentions
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
