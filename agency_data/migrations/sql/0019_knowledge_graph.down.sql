DROP TABLE memory_mentions;
DROP TABLE memory_relations;
DROP TABLE memory_entity_trigrams;
DROP TABLE memory_entities;
DROP FUNCTION agency_data_entity_trigrams_added();
DROP FUNCTION agency_data_entity_trigrams_renamed();
DROP FUNCTION agency_data_relations_erased();
-- pg_trgm stays when another role (the role setup's superuser) installed it.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension
               WHERE extname = 'pg_trgm' AND pg_has_role(current_user, extowner, 'USAGE')) THEN
        DROP EXTENSION pg_trgm;
    END IF;
END;
$$;
