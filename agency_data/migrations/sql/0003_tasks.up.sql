CREATE TABLE tasks (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   text NOT NULL DEFAULT 'default'
                CONSTRAINT tasks_tenant_id_valid CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    agent_id    uuid REFERENCES agents (id) ON DELETE SET NULL,
    type        text NOT NULL
                CONSTRAINT tasks_type_not_blank CHECK (btrim(type) <> '' AND length(type) <= 100),
    status      text NOT NULL DEFAULT 'pending'
                CONSTRAINT tasks_status_valid
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    priority    integer NOT NULL DEFAULT 0
                CONSTRAINT tasks_priority_range CHECK (priority BETWEEN 0 AND 1000),
    data        jsonb NOT NULL DEFAULT '{}'
                CONSTRAINT tasks_data_object CHECK (jsonb_typeof(data) = 'object'),
    result      jsonb,
    error       text,
    attempts    integer NOT NULL DEFAULT 0 CONSTRAINT tasks_attempts_not_negative CHECK (attempts >= 0),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER tasks_touch_updated_at BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION agency_data_touch_updated_at();

-- Claiming: the highest-priority, oldest pending task of a tenant, found without a sort.
CREATE INDEX tasks_claim_queue ON tasks (tenant_id, priority DESC, created_at, id)
    WHERE status = 'pending';
-- An agent's tasks by status (the design's idx_tasks_agent_status), and keyset pagination.
CREATE INDEX tasks_agent_status ON tasks (agent_id, status);
CREATE INDEX tasks_tenant_created ON tasks (tenant_id, created_at, id);
CREATE INDEX tasks_tenant_status_type ON tasks (tenant_id, status, type);
CREATE INDEX tasks_data ON tasks USING gin (data jsonb_path_ops);
