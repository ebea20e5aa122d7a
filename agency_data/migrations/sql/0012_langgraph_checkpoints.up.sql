-- LangGraph checkpoints (agency_data.integrations.langgraph.AgencyCheckpointSaver), after the
-- layout of LangGraph's own PostgresSaver: a row per checkpoint, its channel values apart (a
-- blob per channel and version, so that a value that did not change is stored once for every
-- checkpoint that holds it), and the writes of the tasks of the step after it.
--
-- Every key starts with the tenant: two tenants' identical thread ids never meet. Texts that
-- LangGraph orders (checkpoint ids, task paths) compare bytewise (COLLATE "C"), as Python
-- compares strings, whatever the database's collation. No foreign keys: LangGraph may store
-- the writes of a checkpoint before the checkpoint itself (both go out concurrently).

CREATE TABLE langgraph_checkpoints (
    tenant_id            text NOT NULL,
    thread_id            text COLLATE "C" NOT NULL,
    checkpoint_ns        text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id        text COLLATE "C" NOT NULL,
    parent_checkpoint_id text COLLATE "C",
    -- metadata->>'run_id', kept apart for delete_for_runs.
    run_id               text,
    -- The checkpoint without its channel values (those are in langgraph_checkpoint_blobs).
    checkpoint           jsonb NOT NULL,
    metadata             jsonb NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX langgraph_checkpoints_run ON langgraph_checkpoints (tenant_id, run_id)
    WHERE run_id IS NOT NULL;

-- type 'empty' (and no blob): the channel had no value at that version.
CREATE TABLE langgraph_checkpoint_blobs (
    tenant_id     text NOT NULL,
    thread_id     text COLLATE "C" NOT NULL,
    checkpoint_ns text COLLATE "C" NOT NULL DEFAULT '',
    channel       text COLLATE "C" NOT NULL,
    version       text COLLATE "C" NOT NULL,
    type          text NOT NULL,
    blob          bytea,
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, channel, version)
);

-- idx: the write's place in its task's list, or a negative number for the special channels
-- (an error, an interrupt...), which a later write of the same task replaces.
CREATE TABLE langgraph_checkpoint_writes (
    tenant_id     text NOT NULL,
    thread_id     text COLLATE "C" NOT NULL,
    checkpoint_ns text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id text COLLATE "C" NOT NULL,
    task_id       text COLLATE "C" NOT NULL,
    idx           integer NOT NULL,
    task_path     text COLLATE "C" NOT NULL DEFAULT '',
    channel       text COLLATE "C" NOT NULL,
    type          text NOT NULL,
    blob          bytea,
    PRIMARY KEY (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);

ALTER TABLE langgraph_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE langgraph_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON langgraph_checkpoints
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

ALTER TABLE langgraph_checkpoint_blobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE langgraph_checkpoint_blobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON langgraph_checkpoint_blobs
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

ALTER TABLE langgraph_checkpoint_writes ENABLE ROW LEVEL SECURITY;
ALTER TABLE langgraph_checkpoint_writes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON langgraph_checkpoint_writes
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
