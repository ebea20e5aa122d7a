-- Auditing off everywhere, then the trail itself.
DO $$
DECLARE
    audited regclass;
BEGIN
    FOR audited IN
        SELECT DISTINCT tgrelid::regclass FROM pg_trigger WHERE tgname LIKE 'agency_data_audit_%'
    LOOP
        PERFORM agency_data_audit(audited, false);
    END LOOP;
END
$$;
DROP FUNCTION agency_data_audit(regclass, boolean, text);
DROP FUNCTION agency_data_audit_truncate();
DROP FUNCTION agency_data_audit_prune(text, timestamptz, integer);
DROP FUNCTION agency_data_audit_rows();
DROP FUNCTION agency_data_audit_append(text, text, text, text, jsonb);
DROP FUNCTION agency_data_audit_seal(text, integer);
DROP FUNCTION agency_data_audit_actor();
DROP FUNCTION agency_data_audit_hash(bytea, audit_log);
DROP FUNCTION agency_data_audit_fields(text, bigint, timestamptz, text, text, text, text, jsonb);
DROP TABLE audit_heads;
DROP TABLE audit_log;
DROP TABLE audit_pending;
