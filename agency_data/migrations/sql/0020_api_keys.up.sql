-- API keys of the service (agency_data.service): each bound to one tenant and one role.
--
-- Only a SHA-256 digest of a key's secret is stored. The secret is 32 random bytes, so a fast
-- digest is as strong as a slow password hash here and costs a microsecond per request. A key
-- names its tenant in its own text, and is looked up as that tenant, so checking a key never
-- needs a role that bypasses row-level security: a key that names the wrong tenant finds no row.
CREATE TABLE api_keys (
    tenant_id   text NOT NULL DEFAULT 'default',
    id          text COLLATE "C" NOT NULL
                CONSTRAINT api_keys_id_valid CHECK (id ~ '^[a-z0-9]{16}$'),
    name        text NOT NULL
                CONSTRAINT api_keys_name_valid CHECK (length(name) BETWEEN 1 AND 200),
    role        text NOT NULL
                CONSTRAINT api_keys_role_valid CHECK (role IN ('read-only', 'read-write', 'admin')),
    secret_hash bytea NOT NULL CONSTRAINT api_keys_hash_valid CHECK (length(secret_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- Revocation and listing find a key by its id alone (the owner's view of every tenant).
CREATE UNIQUE INDEX api_keys_id ON api_keys (id);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
