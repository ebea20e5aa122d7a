DROP FUNCTION IF EXISTS agency_data_touch_updated_at();
-- pgvector stays when another role (a superuser, for a least-privilege owner) installed it.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension
               WHERE extname = 'vector' AND pg_has_role(current_user, extowner, 'USAGE')) THEN
        DROP EXTENSION vector;
    END IF;
END;
$$;
