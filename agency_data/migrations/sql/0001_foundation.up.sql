-- pgvector, and the trigger function that keeps updated_at honest on every table.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE OR REPLACE FUNCTION agency_data_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp, not now(): two updates in one transaction must still differ.
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;
