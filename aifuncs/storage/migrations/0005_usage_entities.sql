-- Usage by served entity: per endpoint and the entity that answered, with how many requests a fallback answered
-- (the usage label `fallback_from`); by day and requester for breakdowns, by hour for an endpoint's charts. Folded
-- by `seq` as the other rollups (runtime/_rollups.py keeps their place under the name 'entities_v1' in
-- usage_rollup_state, so the rows logged before these tables existed are folded on the first refresh).
CREATE TABLE usage_entity_daily (
    day TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL, requester TEXT NOT NULL,
    requests BIGINT NOT NULL, errors BIGINT NOT NULL, fallbacks BIGINT NOT NULL, rows BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
    first_ts TEXT NOT NULL,
    PRIMARY KEY (day, endpoint, served_entity, requester)
);
CREATE TABLE usage_entity_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL,
    requests BIGINT NOT NULL, fallbacks BIGINT NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, served_entity)
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
