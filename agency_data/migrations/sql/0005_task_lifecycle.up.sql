-- The task queue's rules, kept by the database so that no client can break them:
-- status transitions, tenant-consistent agent references, full-text search, and a wake-up
-- notification whenever work becomes pending.

ALTER TABLE tasks
    ADD COLUMN started_at  timestamptz,
    ADD COLUMN finished_at timestamptz,
    ADD COLUMN search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', type), 'A')
        || setweight(jsonb_to_tsvector('english', data, '["string", "numeric"]'), 'B')
    ) STORED;

CREATE INDEX tasks_search ON tasks USING gin (search);

-- pending -> running -> completed | failed; pending | running -> cancelled; failed -> pending.
CREATE FUNCTION agency_data_task_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.status = 'pending' AND NEW.status IN ('running', 'cancelled'))
        OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'cancelled'))
        OR (OLD.status = 'failed' AND NEW.status = 'pending')
    ) THEN
        RAISE EXCEPTION 'a task cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_status_transition',
                  TABLE = 'tasks', COLUMN = 'status';
    END IF;
    IF NEW.status = 'running' THEN
        NEW.attempts := OLD.attempts + 1;
        NEW.started_at := clock_timestamp();
        NEW.finished_at := NULL;
    ELSIF NEW.status IN ('completed', 'failed', 'cancelled') THEN
        NEW.finished_at := clock_timestamp();
    ELSIF NEW.status = 'pending' THEN
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER tasks_status_transition BEFORE UPDATE OF status ON tasks
    FOR EACH ROW EXECUTE FUNCTION agency_data_task_transition();

-- A task may only name an agent of its own tenant.
CREATE FUNCTION agency_data_task_agent_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.agent_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM agents WHERE tenant_id = NEW.tenant_id AND id = NEW.agent_id
    ) THEN
        RAISE EXCEPTION 'agent % does not exist in tenant %', NEW.agent_id, NEW.tenant_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'tasks_agent_id_fkey',
                  TABLE = 'tasks', COLUMN = 'agent_id';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER tasks_agent_tenant BEFORE INSERT OR UPDATE OF agent_id ON tasks
    FOR EACH ROW EXECUTE FUNCTION agency_data_task_agent_tenant();

-- Workers waiting for work LISTEN on this channel; the payload is the tenant. Statement-level,
-- so a bulk insert of a thousand tasks sends one notification, not a thousand.
CREATE FUNCTION agency_data_tasks_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agency_data_tasks', tenant_id)
    FROM (SELECT DISTINCT tenant_id FROM new_rows WHERE status = 'pending') AS pending;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_tasks_notify();

CREATE TRIGGER tasks_notify_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_tasks_notify();
