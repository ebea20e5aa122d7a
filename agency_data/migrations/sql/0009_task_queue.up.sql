-- The task queue grows up: leases fenced by a token, retries with backoff and a dead-letter
-- state, scheduled tasks, uniqueness keys, dependencies between tasks, and per-type policies
-- (lease length, attempts, backoff, paused) and periodic schedules shared by every process.

ALTER TABLE tasks DROP CONSTRAINT tasks_status_valid;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_valid
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'dead'));

ALTER TABLE tasks
    ADD COLUMN run_at timestamptz,
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 5
        CONSTRAINT tasks_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 1000),
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN key text
        CONSTRAINT tasks_key_valid CHECK (length(key) BETWEEN 1 AND 200),
    -- How many of the task's dependencies have not completed yet; claimable only at 0.
    ADD COLUMN blocked_by integer NOT NULL DEFAULT 0
        CONSTRAINT tasks_blocked_by_not_negative CHECK (blocked_by >= 0),
    -- Set once another task depends on this one, so that the trigger below runs only then.
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN traceback text;

-- Filling the new columns is no change to the tasks: updated_at stays, nobody is notified.
-- A task running when the upgrade runs gets a lease of five minutes, so that it is rescued
-- if its (older) worker never finishes it.
ALTER TABLE tasks DISABLE TRIGGER USER;
UPDATE tasks SET run_at = created_at,
    lease_expires_at = CASE WHEN status = 'running'
                            THEN clock_timestamp() + interval '5 minutes' END;
ALTER TABLE tasks ENABLE TRIGGER USER;
ALTER TABLE tasks ALTER COLUMN run_at SET NOT NULL,
    ALTER COLUMN run_at SET DEFAULT clock_timestamp();

-- Claiming: the highest-priority task that is due and not waiting on another, found without a
-- sort. Ordered by run_at (creation time unless scheduled), so a retried task queues anew.
DROP INDEX tasks_claim_queue;
CREATE INDEX tasks_ready_queue ON tasks (tenant_id, priority DESC, run_at, id)
    WHERE status = 'pending' AND blocked_by = 0;
-- One live task per key: a submit retried after a timeout finds the first one.
CREATE UNIQUE INDEX tasks_live_key ON tasks (tenant_id, key)
    WHERE key IS NOT NULL AND status IN ('pending', 'running');

-- pending -> running -> completed | failed | dead | pending (retry, or a lost lease);
-- pending | running -> cancelled; failed | dead -> pending (sent back by hand).
CREATE OR REPLACE FUNCTION agency_data_task_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.status = 'pending' AND NEW.status IN ('running', 'cancelled'))
        OR (OLD.status = 'running'
            AND NEW.status IN ('completed', 'failed', 'dead', 'cancelled', 'pending'))
        OR (OLD.status IN ('failed', 'dead') AND NEW.status = 'pending')
    ) THEN
        RAISE EXCEPTION 'a task cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_status_transition',
                  TABLE = 'tasks', COLUMN = 'status';
    END IF;
    IF NEW.status = 'running' THEN
        NEW.attempts := OLD.attempts + 1;
        NEW.started_at := clock_timestamp();
        NEW.finished_at := NULL;
    ELSIF NEW.status IN ('completed', 'failed', 'dead', 'cancelled') THEN
        NEW.finished_at := clock_timestamp();
        -- The token stays: a worker that resends its completion is told it already landed.
        NEW.lease_expires_at := NULL;
    ELSIF NEW.status = 'pending' THEN
        NEW.finished_at := NULL;
        NEW.lease_token := NULL;
        NEW.lease_expires_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;

-- Which task waits on which. Rows go with either task: with the waiting one by the foreign
-- key, with the one waited on by the statement trigger below (which first cancels the tasks
-- still waiting on it; a foreign key's cascade would remove the rows before it could).
CREATE TABLE task_dependencies (
    tenant_id  text NOT NULL DEFAULT 'default',
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on uuid NOT NULL,
    PRIMARY KEY (task_id, depends_on),
    CONSTRAINT task_dependencies_not_self CHECK (task_id <> depends_on)
);
CREATE INDEX task_dependencies_depends_on ON task_dependencies (depends_on);
ALTER TABLE task_dependencies ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_dependencies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON task_dependencies
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- The dependents of a task that ended without completing are cancelled, and theirs in turn.
CREATE FUNCTION agency_data_cancel_dependents(tenant text, ended uuid, reason text)
RETURNS void LANGUAGE sql AS $$
    WITH RECURSIVE below(id) AS (
        SELECT task_id FROM task_dependencies WHERE tenant_id = tenant AND depends_on = ended
        UNION
        SELECT d.task_id FROM task_dependencies AS d JOIN below AS b ON d.depends_on = b.id
        WHERE d.tenant_id = tenant
    )
    UPDATE tasks SET status = 'cancelled', error = reason
    WHERE tenant_id = tenant AND id IN (SELECT id FROM below) AND status = 'pending';
$$;

CREATE FUNCTION agency_data_task_dependents() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'completed' THEN
        UPDATE tasks SET blocked_by = blocked_by - 1
        WHERE tenant_id = NEW.tenant_id AND status = 'pending' AND id IN (
            SELECT task_id FROM task_dependencies
            WHERE tenant_id = NEW.tenant_id AND depends_on = NEW.id
        );
    ELSE
        PERFORM agency_data_cancel_dependents(
            NEW.tenant_id, NEW.id,
            format('task %s, which this one depends on, ended %s', NEW.id, NEW.status)
        );
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_dependents_ended AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'dead', 'cancelled'))
    EXECUTE FUNCTION agency_data_task_dependents();

-- After the whole statement: a row trigger would cancel a dependent that the same DELETE is
-- about to remove, which PostgreSQL refuses.
CREATE FUNCTION agency_data_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone record;
BEGIN
    FOR gone IN
        SELECT tenant_id, id FROM old_rows WHERE has_dependents AND status <> 'completed'
    LOOP
        PERFORM agency_data_cancel_dependents(
            gone.tenant_id, gone.id,
            format('task %s, which this one depends on, was deleted', gone.id)
        );
    END LOOP;
    DELETE FROM task_dependencies
    WHERE depends_on IN (SELECT id FROM old_rows WHERE has_dependents);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_dependency_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agency_data_tasks_deleted();

-- Per-type policies, shared by every process: NULL means the configured default.
CREATE TABLE task_types (
    tenant_id     text NOT NULL DEFAULT 'default',
    type          text NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    lease_seconds double precision
        CONSTRAINT task_types_lease_range CHECK (lease_seconds > 0 AND lease_seconds <= 86400),
    max_attempts  integer CONSTRAINT task_types_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 1000),
    retry_first   double precision
        CONSTRAINT task_types_retry_first_range CHECK (retry_first >= 0 AND retry_first <= 86400),
    retry_most    double precision
        CONSTRAINT task_types_retry_most_range CHECK (retry_most >= 0 AND retry_most <= 2592000),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, type)
);
ALTER TABLE task_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_types FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON task_types
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Periodic tasks. Whoever locks a due row enqueues its task and moves next_run_at on, in one
-- transaction: one task per tick however many schedulers run.
CREATE TABLE task_schedules (
    tenant_id     text NOT NULL DEFAULT 'default',
    name          text NOT NULL CONSTRAINT task_schedules_name_valid CHECK (length(name) BETWEEN 1 AND 200),
    cron          text,
    every_seconds double precision CONSTRAINT task_schedules_every_range CHECK (every_seconds > 0),
    timezone      text NOT NULL DEFAULT 'UTC',
    type          text NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer,
    next_run_at   timestamptz NOT NULL,
    last_run_at   timestamptz,
    last_task_id  uuid,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, name),
    CONSTRAINT task_schedules_one_rule CHECK (num_nonnulls(cron, every_seconds) = 1)
);
CREATE INDEX task_schedules_due ON task_schedules (tenant_id, next_run_at);
ALTER TABLE task_schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_schedules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON task_schedules
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
