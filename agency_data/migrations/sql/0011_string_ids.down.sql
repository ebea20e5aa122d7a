-- Back to UUID ids, unique across tenants: refused while any collection holds an id that is
-- not a UUID's text, or one id in two tenants (rename or delete those first).
DO $$
DECLARE
    collection record;
    bad text;
BEGIN
    FOR collection IN SELECT name, table_name FROM embedding_collections LOOP
        EXECUTE format(
            'SELECT id FROM %I WHERE id !~* ''^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'' LIMIT 1',
            collection.table_name) INTO bad;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'collection % holds the id %, which is not a UUID', collection.name, bad
                USING HINT = 'delete or re-store such embeddings under UUID ids before rolling back';
        END IF;
        -- As UUIDs: 'ABC...' and 'abc...' are one.
        EXECUTE format('SELECT min(id) FROM %I GROUP BY id::uuid HAVING count(*) > 1 LIMIT 1',
                       collection.table_name) INTO bad;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'collection % holds the id % in more than one tenant', collection.name, bad
                USING HINT = 'delete or re-store one of them under another id before rolling back';
        END IF;
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I',
                       collection.table_name, collection.table_name || '_pkey');
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I',
                       collection.table_name, collection.table_name || '_id_length');
        EXECUTE format(
            'ALTER TABLE %I ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id TYPE uuid USING id::uuid, '
            'ALTER COLUMN id SET DEFAULT gen_random_uuid(), ADD PRIMARY KEY (id)',
            collection.table_name);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION agency_data_audit_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    kept text := TG_ARGV[0];
    who text := agency_data_audit_actor();
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT n.tenant_id, who, 'insert', TG_TABLE_NAME, n.id::text,
               CASE kept
                   WHEN 'values' THEN jsonb_build_object('after', to_jsonb(n))
                   ELSE jsonb_build_object('after', encode(sha256(record_send(n)), 'hex'))
               END
        FROM new_rows n ORDER BY n.tenant_id, n.id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT o.tenant_id, who, 'delete', TG_TABLE_NAME, o.id::text,
               CASE kept
                   WHEN 'values' THEN jsonb_build_object('before', to_jsonb(o))
                   ELSE jsonb_build_object('before', encode(sha256(record_send(o)), 'hex'))
               END
        FROM old_rows o ORDER BY o.tenant_id, o.id;
    ELSE
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT coalesce(n.tenant_id, o.tenant_id), who,
               CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete'
                    ELSE 'update' END,
               TG_TABLE_NAME, coalesce(n.id, o.id)::text,
               jsonb_strip_nulls(CASE kept
                   WHEN 'values' THEN jsonb_build_object(
                       'before', to_jsonb(o), 'after', to_jsonb(n))
                   WHEN 'fields' THEN jsonb_build_object(
                       'changed', (SELECT jsonb_agg(a.key ORDER BY a.key)
                                   FROM jsonb_each(to_jsonb(n)) a
                                   JOIN jsonb_each(to_jsonb(o)) b USING (key)
                                   WHERE a.value IS DISTINCT FROM b.value),
                       'before', encode(sha256(record_send(o)), 'hex'),
                       'after', encode(sha256(record_send(n)), 'hex'))
                   ELSE jsonb_build_object(
                       'before', encode(sha256(record_send(o)), 'hex'),
                       'after', encode(sha256(record_send(n)), 'hex'))
               END)
        FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
        ORDER BY 1, 5;
    END IF;
    RETURN NULL;
END
$$;
