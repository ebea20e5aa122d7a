DROP TRIGGER IF EXISTS tasks_notify_update ON tasks;
DROP TRIGGER IF EXISTS tasks_notify_insert ON tasks;
DROP FUNCTION IF EXISTS agency_data_tasks_notify();
DROP TRIGGER IF EXISTS tasks_agent_tenant ON tasks;
DROP FUNCTION IF EXISTS agency_data_task_agent_tenant();
DROP TRIGGER IF EXISTS tasks_status_transition ON tasks;
DROP FUNCTION IF EXISTS agency_data_task_transition();
DROP INDEX IF EXISTS tasks_search;
ALTER TABLE tasks DROP COLUMN IF EXISTS search, DROP COLUMN IF EXISTS finished_at,
    DROP COLUMN IF EXISTS started_at;
