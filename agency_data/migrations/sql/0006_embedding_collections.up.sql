-- Embeddings live in one table per collection (named in this catalog), each with a vector
-- column of its own fixed dimension and storage type, so that indexes, PLAIN storage and the
-- planner's statistics all fit the collection. The generic table of 0004 gives way to them.
DROP TABLE IF EXISTS embeddings;

CREATE TABLE embedding_collections (
    name               text PRIMARY KEY
                       CONSTRAINT embedding_collections_name_valid CHECK (name ~ '^[a-z][a-z0-9_]{0,47}$'),
    table_name         text NOT NULL UNIQUE,
    dimension          integer NOT NULL
                       CONSTRAINT embedding_collections_dimension_range CHECK (dimension BETWEEN 1 AND 16000),
    metric             text NOT NULL
                       CONSTRAINT embedding_collections_metric_valid
                       CHECK (metric IN ('cosine', 'euclidean', 'manhattan', 'inner_product')),
    storage            text NOT NULL
                       CONSTRAINT embedding_collections_storage_valid CHECK (storage IN ('vector', 'halfvec')),
    index_kind         text
                       CONSTRAINT embedding_collections_index_kind_valid CHECK (index_kind IN ('hnsw', 'ivfflat')),
    index_quantization text NOT NULL DEFAULT 'none'
                       CONSTRAINT embedding_collections_index_quantization_valid
                       CHECK (index_quantization IN ('none', 'binary')),
    index_options      jsonb NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Typed views of a JSON value for the metadata filter language: NULL unless the value has the
-- type asked for, so comparisons across types are simply false and never raise.
CREATE FUNCTION agency_data_json_number(value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'number' THEN value::numeric END
$$;

CREATE FUNCTION agency_data_json_text(value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'string' THEN value #>> '{}' END
$$;

-- ISO 8601 strings only (what Python's datetime.fromisoformat reads); others are NULL.
CREATE FUNCTION agency_data_json_timestamptz(value jsonb) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    text_value text := agency_data_json_text(value);
BEGIN
    IF text_value IS NULL OR text_value !~
        '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$' THEN
        RETURN NULL;
    END IF;
    RETURN text_value::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN NULL;
END;
$$;

-- Arrays contain an element equal to the needle; strings contain it as a substring.
CREATE FUNCTION agency_data_json_contains(value jsonb, needle jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(value)
        WHEN 'array' THEN value @> jsonb_build_array(needle)
        WHEN 'string' THEN jsonb_typeof(needle) = 'string'
                           AND strpos(value #>> '{}', needle #>> '{}') > 0
        ELSE false
    END
$$;
