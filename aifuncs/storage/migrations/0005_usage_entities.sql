-- Usage by served entity: an hourly rollup per endpoint, the entity that answered and requester, with how many
-- requests a fallback answered (the usage label `fallback_from`), folded by `seq` as the other rollups
-- (runtime/_rollups.py keeps its own place under the name 'entities_v1' in usage_rollup_state, so the rows
-- logged before this table existed are folded on the first refresh).
CREATE TABLE usage_entity_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL, requester TEXT NOT NULL,
    requests BIGINT NOT NULL, errors BIGINT NOT NULL, fallbacks BIGINT NOT NULL, rows BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
    first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, served_entity, requester)
);

-- 1 when `labels` (a row's usage_context) is a JSON object whose `label` is set and not null, else 0: SQLite's
-- json_valid/json_extract rule. Malformed text is 0, never an error that would stop the fold.
CREATE FUNCTION aifuncs_labelled(labels TEXT, label TEXT) RETURNS INT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    parsed JSON;
BEGIN
    -- A \u0000 escape is valid JSON that PostgreSQL will not read out of a document (SQLite does): read as \u0001,
    -- which keeps the document as valid or invalid as it was and no key becomes another's.
    parsed := replace(labels, '\u0000', '\u0001')::json;
    IF json_typeof(parsed) = 'object' AND coalesce(json_typeof(parsed -> label), 'null') <> 'null' THEN
        RETURN 1;
    END IF;
    RETURN 0;
EXCEPTION WHEN data_exception THEN
    RETURN 0;
END
$$;
