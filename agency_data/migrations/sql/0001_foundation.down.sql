DROP FUNCTION IF EXISTS agency_data_touch_updated_at();
DROP EXTENSION IF EXISTS vector;
