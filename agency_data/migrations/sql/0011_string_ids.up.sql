-- Embedding ids become strings: any non-empty text of up to 512 characters ("doc-1", a path, a
-- UUID's text), as LangChain, LangGraph and most vector stores use them. Ids are unique per
-- tenant, not across tenants: two tenants may both have a "1". The column is compared bytewise
-- (COLLATE "C"), which is what an id needs and the cheapest comparison there is. UUIDs already
-- stored keep their canonical text (lowercase, hyphenated).
DO $$
DECLARE
    collection record;
BEGIN
    FOR collection IN SELECT table_name FROM embedding_collections LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I',
                       collection.table_name, collection.table_name || '_pkey');
        EXECUTE format(
            'ALTER TABLE %I ALTER COLUMN id DROP DEFAULT, '
            'ALTER COLUMN id TYPE text COLLATE "C" USING id::text, '
            'ALTER COLUMN id SET DEFAULT gen_random_uuid()::text, '
            'ADD CONSTRAINT %I CHECK (length(id) BETWEEN 1 AND 512), '
            'ADD PRIMARY KEY (tenant_id, id)',
            collection.table_name, collection.table_name || '_id_length');
    END LOOP;
END;
$$;

-- An id no longer names one row across tenants: an update's old and new versions are paired by
-- tenant and id (a statement of the owner's may touch several tenants' "1").
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
        FROM new_rows n FULL JOIN old_rows o ON o.tenant_id = n.tenant_id AND o.id = n.id
        ORDER BY 1, 5;
    END IF;
    RETURN NULL;
END
$$;
