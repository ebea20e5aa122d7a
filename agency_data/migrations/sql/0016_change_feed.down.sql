DO $$
DECLARE
    captured regclass;
BEGIN
    -- Capture triggers on other tables (dl.changes.track) go with the function they call.
    FOR captured IN SELECT tgrelid::regclass FROM pg_trigger WHERE tgname = 'agency_data_changes'
    LOOP
        EXECUTE format('DROP TRIGGER agency_data_changes ON %s', captured);
        EXECUTE format('DROP TRIGGER IF EXISTS agency_data_changes_truncate ON %s', captured);
    END LOOP;
END
$$;
DROP FUNCTION agency_data_capture_change();
DROP FUNCTION agency_data_capture_truncate();
DROP TABLE change_consumers;
DROP TABLE change_feed;
DROP TABLE changes;
DROP TABLE outbox_relay;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL;
DROP INDEX outbox_unsent_xid;
DROP TRIGGER outbox_commit_order ON outbox;
DROP FUNCTION agency_data_order_commit();
DROP TABLE commit_order;
DROP SEQUENCE commit_order_seq;
