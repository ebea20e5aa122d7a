CREATE TABLE agents (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text NOT NULL DEFAULT 'default'
                 CONSTRAINT agents_tenant_id_valid CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name         text NOT NULL
                 CONSTRAINT agents_name_not_blank CHECK (btrim(name) <> '' AND length(name) <= 255),
    type         text NOT NULL
                 CONSTRAINT agents_type_not_blank CHECK (btrim(type) <> '' AND length(type) <= 100),
    capabilities jsonb NOT NULL DEFAULT '{}'
                 CONSTRAINT agents_capabilities_object CHECK (jsonb_typeof(capabilities) = 'object'),
    status       text NOT NULL DEFAULT 'active'
                 CONSTRAINT agents_status_valid CHECK (status IN ('active', 'inactive', 'maintenance')),
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER agents_touch_updated_at BEFORE UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION agency_data_touch_updated_at();

-- Listing by type/status within a tenant, and keyset pagination in creation order.
CREATE INDEX agents_tenant_type_status ON agents (tenant_id, type, status);
CREATE INDEX agents_tenant_created ON agents (tenant_id, created_at, id);
-- Capability queries use JSONB containment (@>).
CREATE INDEX agents_capabilities ON agents USING gin (capabilities jsonb_path_ops);
