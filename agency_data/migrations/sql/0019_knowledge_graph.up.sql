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
-- A row's times never change but for invalidated_at, set once (erasure aside: see the trigger
-- below): a fact whose interval changes (ended by a newer fact, by invalidate(), or merged
-- with the same fact stated again) gets a new version (same id, version + 1) and the old
-- version is invalidated, so that the graph answers both "what was true at T" and "what did
-- we believe at T".
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
-- What an erased fact had invalidated (the trigger below).
CREATE INDEX memory_relations_invalidated_by ON memory_relations (tenant_id, invalidated_by)
    WHERE invalidated_by IS NOT NULL;
ALTER TABLE memory_relations ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_relations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memory_relations
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Erasing a fact undoes what its statement did to the other facts, so that the graph answers
-- as if it had never been told (agency_data.memory._graph_time's rules leave the links this
-- reads): a fact is erased with its memory (ON DELETE CASCADE), its entity, its tenant, or by
-- a DELETE of one's own, and a trigger sees every one of those paths.
--
-- A version V of a surviving fact that an erased fact X invalidated comes back: the version
-- X's statement wrote in its place (V's successor, recorded when V was invalidated: V cut
-- where X began; for a V told late, V was recorded as told and at once ended by X) is
-- deleted, and V takes that successor's own invalidation (none: V is believed again; or
-- the later change that ended the successor, whose versions keep their ends but for those
-- that had kept X's). A V that X replaced outright or merged into itself, with no
-- successor, is believed again. A fact given back its end is then cut, as relate() would
-- have, at the start of the first other fact of its source and relation (exclusive: one
-- target at a time, which is what made X end it) that begins inside its interval;
-- withdrawn if another target's fact began at the same moment, or merged into the same fact
-- told again by its memory while X had replaced it. The versions X's statement wrote go, so
-- nothing left holds the dates that only the erased memory gave.
--
-- It runs as the deleting role: under its tenant's row-level security for a DELETE of the
-- application's own, and as the table owner, which the policy does not bind, when the rows
-- go by a foreign key's cascade (PostgreSQL runs those as the owner). Every statement here
-- is therefore confined to the erased rows' tenant by its own conditions, and nothing needs
-- SECURITY DEFINER. It takes relate()'s lock of each source and relation it changes.
CREATE FUNCTION agency_data_relations_erased() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    moment timestamptz := clock_timestamp();
    erased_tenants text[];
    erased_ids text[];
    erased_targets text[];
    hit record;
    successor record;
    held record;
    other record;
    reach timestamptz;
    doomed_tenants text[] := '{}';
    doomed_ids text[] := '{}';
    doomed_versions integer[] := '{}';
    cut_tenants text[] := '{}';
    cut_ids text[] := '{}';
BEGIN
    -- Most memories erased had no facts: their cascade deletes none, and this trigger still
    -- fires. PostgreSQL plans a query over the transition table anew on every call, so the
    -- queries on it are the fewest and simplest: the rest read arrays.
    IF NOT EXISTS (SELECT FROM gone) THEN
        RETURN NULL;
    END IF;
    -- The facts erased whole: a DELETE that leaves some of a fact's versions undoes nothing
    -- (nor does the DELETE of successors below, which fires this trigger again).
    SELECT array_agg(x.tenant_id), array_agg(x.id), array_agg(x.target_id)
    INTO erased_tenants, erased_ids, erased_targets
    FROM (SELECT DISTINCT tenant_id, id, target_id FROM gone) x
    WHERE NOT EXISTS (SELECT FROM memory_relations s
                      WHERE s.tenant_id = x.tenant_id AND s.id = x.id);
    IF erased_ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Each source and relation touched, locked in one order (two erasures cannot deadlock
    -- on each other), before the versions are read.
    PERFORM pg_advisory_xact_lock(hashtextextended(
        k.tenant_id || chr(31) || k.source_id || chr(31) || k.relation, 0))
    FROM (SELECT DISTINCT r.tenant_id, r.source_id, r.relation
          FROM unnest(erased_tenants, erased_ids) AS x(tenant_id, id)
          JOIN memory_relations r ON r.tenant_id = x.tenant_id AND r.invalidated_by = x.id
          ORDER BY 1, 2, 3) k;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The versions of other facts that the erased facts invalidated, newest first, so that
    -- a version takes its successor's invalidation once that successor has taken its own.
    FOR hit IN
        SELECT r.tenant_id, r.id, r.version, r.target_id, r.valid_to, r.invalidated_at,
               x.target_id AS erased_target
        FROM unnest(erased_tenants, erased_ids, erased_targets) AS x(tenant_id, id, target_id)
        JOIN memory_relations r ON r.tenant_id = x.tenant_id AND r.invalidated_by = x.id
        ORDER BY r.tenant_id, r.id, r.version DESC
    LOOP
        -- The version written in its place: the next one (an earlier erasure may have
        -- taken those between), recorded when it was invalidated.
        SELECT s.version, s.valid_to, s.recorded_at, s.invalidated_at, s.invalidated_by
        INTO successor
        FROM memory_relations s
        WHERE s.tenant_id = hit.tenant_id AND s.id = hit.id AND s.version > hit.version
        ORDER BY s.version
        LIMIT 1;
        IF FOUND AND successor.recorded_at = hit.invalidated_at THEN
            UPDATE memory_relations
            SET invalidated_at = successor.invalidated_at,
                invalidated_by = successor.invalidated_by
            WHERE tenant_id = hit.tenant_id AND id = hit.id AND version = hit.version;
            -- Later versions that kept the end the erased fact gave (a property added from
            -- the same memory since) get V's own: an erasure is the one time a version's
            -- valid time is rewritten, so that no row keeps a date only the erased fact gave.
            UPDATE memory_relations SET valid_to = hit.valid_to
            WHERE tenant_id = hit.tenant_id AND id = hit.id AND version > successor.version
              AND valid_to = successor.valid_to
              AND hit.valid_to IS DISTINCT FROM successor.valid_to;
            doomed_tenants := doomed_tenants || hit.tenant_id;
            doomed_ids := doomed_ids || hit.id;
            doomed_versions := doomed_versions || successor.version;
        ELSIF NOT EXISTS (SELECT FROM memory_relations c
                          WHERE c.tenant_id = hit.tenant_id AND c.id = hit.id
                            AND c.invalidated_at IS NULL) THEN
            UPDATE memory_relations SET invalidated_at = NULL, invalidated_by = NULL
            WHERE tenant_id = hit.tenant_id AND id = hit.id AND version = hit.version;
            IF hit.target_id = hit.erased_target THEN
                -- Merged into the erased fact (the same target): no exclusive end to redo.
                CONTINUE;
            END IF;
        ELSE
            CONTINUE;
        END IF;
        cut_tenants := cut_tenants || hit.tenant_id;
        cut_ids := cut_ids || hit.id;
    END LOOP;
    DELETE FROM memory_relations r
    USING unnest(doomed_tenants, doomed_ids, doomed_versions) AS d(tenant_id, id, version)
    WHERE r.tenant_id = d.tenant_id AND r.id = d.id AND r.version = d.version;
    -- What the erased fact had ended gets the end relate() would have given it without it.
    FOR held IN
        SELECT r.* FROM (SELECT DISTINCT * FROM unnest(cut_tenants, cut_ids)) AS t(tenant_id, id)
        JOIN memory_relations r ON r.tenant_id = t.tenant_id AND r.id = t.id
        WHERE r.invalidated_at IS NULL
        ORDER BY r.tenant_id, r.source_id, r.relation, r.valid_from, r.id
    LOOP
        -- One given back before may have replaced it since (the same start, told later).
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM memory_relations c
            WHERE c.tenant_id = held.tenant_id AND c.id = held.id AND c.version = held.version
              AND c.invalidated_at IS NULL);
        LOOP
            SELECT o.id, o.version, o.target_id, o.properties, o.valid_from, o.valid_to,
                   (SELECT min(f.recorded_at) FROM memory_relations f
                    WHERE f.tenant_id = o.tenant_id AND f.id = o.id) AS told_at
            INTO other
            FROM memory_relations o
            WHERE o.tenant_id = held.tenant_id AND o.source_id = held.source_id
              AND o.relation = held.relation AND o.invalidated_at IS NULL AND o.id <> held.id
              AND o.valid_from >= held.valid_from
              AND (held.valid_to IS NULL OR o.valid_from < held.valid_to)
              -- The same start and target from another memory: a fact of its own.
              AND NOT (o.valid_from = held.valid_from AND o.target_id = held.target_id
                       AND o.source_memory IS DISTINCT FROM held.source_memory)
            ORDER BY o.valid_from, o.id
            LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF other.valid_from = held.valid_from AND other.target_id <> held.target_id
               AND other.told_at < (SELECT min(f.recorded_at) FROM memory_relations f
                                    WHERE f.tenant_id = held.tenant_id AND f.id = held.id)
            THEN
                -- Another target's state from the same moment, told before this fact: this
                -- one, told later, replaces it outright (the erased fact had stood between).
                UPDATE memory_relations SET invalidated_at = moment, invalidated_by = held.id
                WHERE tenant_id = held.tenant_id AND id = other.id
                  AND version = other.version;
                CONTINUE;
            END IF;
            UPDATE memory_relations SET invalidated_at = moment, invalidated_by = other.id
            WHERE tenant_id = held.tenant_id AND id = held.id AND version = held.version;
            IF other.valid_from > held.valid_from THEN
                INSERT INTO memory_relations (tenant_id, id, version, source_id, relation,
                    target_id, properties, valid_from, valid_to, recorded_at, source_memory)
                VALUES (held.tenant_id, held.id, held.version + 1, held.source_id,
                    held.relation, held.target_id, held.properties, held.valid_from,
                    other.valid_from, moment, held.source_memory);
            ELSIF other.target_id = held.target_id THEN
                -- Told again by its memory while the erased fact had replaced it, so made a
                -- fact of its own: one fact, over both times (as relate() extends a fact).
                SELECT least(coalesce(held.valid_to, 'infinity'), coalesce(min(n.valid_from),
                             'infinity'))
                INTO reach
                FROM memory_relations n
                WHERE n.tenant_id = held.tenant_id AND n.source_id = held.source_id
                  AND n.relation = held.relation AND n.invalidated_at IS NULL
                  AND n.id <> other.id AND n.valid_from > held.valid_from;
                IF reach > coalesce(other.valid_to, 'infinity') THEN
                    UPDATE memory_relations
                    SET invalidated_at = moment, invalidated_by = other.id
                    WHERE tenant_id = held.tenant_id AND id = other.id
                      AND version = other.version;
                    INSERT INTO memory_relations (tenant_id, id, version, source_id, relation,
                        target_id, properties, valid_from, valid_to, recorded_at,
                        source_memory)
                    VALUES (held.tenant_id, other.id, other.version + 1, held.source_id,
                        held.relation, held.target_id, held.properties || other.properties,
                        held.valid_from, nullif(reach, 'infinity'), moment,
                        held.source_memory);
                END IF;
            END IF;
            -- Else another target's state from the same moment, told later, replaces it.
            EXIT;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_relations_erased AFTER DELETE ON memory_relations
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_relations_erased();

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
