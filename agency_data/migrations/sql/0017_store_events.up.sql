-- Store events: a task's creation and status changes, an agent's creation, status changes and
-- deletion, and writes to a collection's embeddings become outbox messages (streams
-- events:<event>, relayed like any tx.publish), written by triggers in the same transaction
-- as the change. So a rollback leaves none, and every writer is covered (the layer's stores,
-- its sweepers, raw SQL).
--
-- A trigger fires only in a session whose setting agency_data.events names the store
-- ('tasks,agents,embeddings', set per connection from the events config): off, a row trigger's
-- WHEN is one comparison and queues nothing. The functions run as the owner (SECURITY DEFINER)
-- so that the writer needs no right on the outbox; the outbox row takes the changed row's
-- tenant, which under row-level security is the writer's own.

CREATE FUNCTION agency_data_announces(store text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT store = ANY (string_to_array(
        replace(current_setting('agency_data.events', true), ' ', ''), ','))
$$;

-- Event times in one form whatever the session's time zone: ISO 8601, UTC.
CREATE FUNCTION agency_data_event_time(at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
$$;

-- A task's message names it, its type, agent, priority and attempts, never its data, result
-- or error (large, and possibly encrypted).
CREATE FUNCTION agency_data_task_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text := CASE TG_OP WHEN 'INSERT' THEN 'task.created' ELSE 'task.' || NEW.status END;
BEGIN
    INSERT INTO outbox (tenant_id, kind, destination, message)
    VALUES (NEW.tenant_id, 'stream', 'events:' || name, json_build_object(
        'event', name,
        'id', NEW.id,
        'type', NEW.type,
        'status', NEW.status,
        'previous', CASE TG_OP WHEN 'UPDATE' THEN OLD.status END,
        'agent', NEW.agent_id,
        'priority', NEW.priority,
        'attempts', NEW.attempts,
        'at', agency_data_event_time(NEW.updated_at)));
    RETURN NULL;
END;
$$;

CREATE FUNCTION agency_data_agent_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    item record;
    name text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        item := OLD;
        name := 'agent.deleted';
    ELSE
        item := NEW;
        name := CASE TG_OP WHEN 'INSERT' THEN 'agent.created' ELSE 'agent.' || NEW.status END;
    END IF;
    INSERT INTO outbox (tenant_id, kind, destination, message)
    VALUES (item.tenant_id, 'stream', 'events:' || name, json_build_object(
        'event', name,
        'id', item.id,
        'type', item.type,
        'name', item.name,
        'status', item.status,
        'previous', CASE TG_OP WHEN 'UPDATE' THEN OLD.status END,
        'at', agency_data_event_time(
            CASE TG_OP WHEN 'DELETE' THEN clock_timestamp() ELSE item.updated_at END)));
    RETURN NULL;
END;
$$;

-- Named to sort before tasks_dependents_ended (AFTER triggers fire in name order): a task's
-- own event comes before those of the dependents its end cancels.
CREATE TRIGGER tasks_announce_created AFTER INSERT ON tasks
    FOR EACH ROW WHEN (agency_data_announces('tasks'))
    EXECUTE FUNCTION agency_data_task_event();
-- Any UPDATE, not UPDATE OF status: a status set by a trigger of someone else's counts too.
CREATE TRIGGER tasks_announce_status AFTER UPDATE ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND agency_data_announces('tasks'))
    EXECUTE FUNCTION agency_data_task_event();

CREATE TRIGGER agents_announce_created AFTER INSERT ON agents
    FOR EACH ROW WHEN (agency_data_announces('agents'))
    EXECUTE FUNCTION agency_data_agent_event();
CREATE TRIGGER agents_announce_status AFTER UPDATE ON agents
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND agency_data_announces('agents'))
    EXECUTE FUNCTION agency_data_agent_event();
CREATE TRIGGER agents_announce_deleted AFTER DELETE ON agents
    FOR EACH ROW WHEN (agency_data_announces('agents'))
    EXECUTE FUNCTION agency_data_agent_event();

-- Embeddings: one message per statement and tenant (a bulk store is one statement per slice
-- of rows, not one message per vector), with the count and up to 1,000 of the ids. Upserts
-- fire the INSERT trigger for the rows they add and the UPDATE one for those they replace.
CREATE FUNCTION agency_data_embedding_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO outbox (tenant_id, kind, destination, message)
        SELECT g.tenant_id, 'stream', 'events:embedding.deleted', json_build_object(
                   'event', 'embedding.deleted',
                   'collection', TG_ARGV[0],
                   'count', g.n,
                   'ids', ARRAY(SELECT r.id FROM old_rows r WHERE r.tenant_id = g.tenant_id
                                LIMIT 1000),
                   'at', agency_data_event_time(clock_timestamp()))
        FROM (SELECT tenant_id, count(*) AS n FROM old_rows GROUP BY tenant_id) g
        ORDER BY g.tenant_id;
    ELSE
        INSERT INTO outbox (tenant_id, kind, destination, message)
        SELECT g.tenant_id, 'stream', 'events:embedding.stored', json_build_object(
                   'event', 'embedding.stored',
                   'collection', TG_ARGV[0],
                   'count', g.n,
                   'ids', ARRAY(SELECT r.id FROM new_rows r WHERE r.tenant_id = g.tenant_id
                                LIMIT 1000),
                   'at', agency_data_event_time(clock_timestamp()))
        FROM (SELECT tenant_id, count(*) AS n FROM new_rows GROUP BY tenant_id) g
        ORDER BY g.tenant_id;
    END IF;
    RETURN NULL;
END;
$$;

-- What every collection's table gets: made here for the existing ones and by the collections
-- catalog for later ones. Transition tables cost nothing measurable while the setting is off
-- (a statement trigger's WHEN cannot stop their capture; measured on 768-d bulk inserts).
CREATE FUNCTION agency_data_announce_embeddings(target regclass, collection text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER agency_data_announce_insert AFTER INSERT ON %s '
        'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
        'WHEN (agency_data_announces(''embeddings'')) '
        'EXECUTE FUNCTION agency_data_embedding_event(%L)', target, collection);
    EXECUTE format(
        'CREATE TRIGGER agency_data_announce_update AFTER UPDATE ON %s '
        'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
        'WHEN (agency_data_announces(''embeddings'')) '
        'EXECUTE FUNCTION agency_data_embedding_event(%L)', target, collection);
    EXECUTE format(
        'CREATE TRIGGER agency_data_announce_delete AFTER DELETE ON %s '
        'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
        'WHEN (agency_data_announces(''embeddings'')) '
        'EXECUTE FUNCTION agency_data_embedding_event(%L)', target, collection);
END;
$$;

DO $$
BEGIN
    PERFORM agency_data_announce_embeddings(table_name::regclass, name)
    FROM embedding_collections;
END;
$$;

REVOKE EXECUTE ON FUNCTION agency_data_task_event() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION agency_data_agent_event() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION agency_data_embedding_event() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION agency_data_announce_embeddings(regclass, text) FROM PUBLIC;
