-- Store events off: the triggers, then their functions. Messages already in the outbox stay
-- and are relayed as any other.
DO $$
DECLARE
    announced record;
BEGIN
    FOR announced IN
        SELECT tgrelid::regclass AS target, tgname FROM pg_trigger
        WHERE tgname IN ('agency_data_announce_insert', 'agency_data_announce_update',
                         'agency_data_announce_delete')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', announced.tgname, announced.target);
    END LOOP;
END;
$$;
DROP TRIGGER tasks_announce_created ON tasks;
DROP TRIGGER tasks_announce_status ON tasks;
DROP TRIGGER agents_announce_created ON agents;
DROP TRIGGER agents_announce_status ON agents;
DROP TRIGGER agents_announce_deleted ON agents;
DROP FUNCTION agency_data_announce_embeddings(regclass, text);
DROP FUNCTION agency_data_embedding_event();
DROP FUNCTION agency_data_agent_event();
DROP FUNCTION agency_data_task_event();
DROP FUNCTION agency_data_event_time(timestamptz);
DROP FUNCTION agency_data_announces(text);
