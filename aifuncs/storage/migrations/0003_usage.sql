-- Usage, its rollups and the inference tables (usage.db and payloads.db under SQLite), one view for every host.
-- Rows are told apart by request id: a batch written again after a lost answer, or a dead process's journal
-- replayed, inserts only what is missing (ON CONFLICT DO NOTHING). `seq` orders rows as they were committed
-- (writers of usage take turns), so the rollups fold each row once from where they stopped.
CREATE TABLE usage (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts TEXT NOT NULL, endpoint TEXT NOT NULL, endpoint_version BIGINT, kind TEXT, function TEXT,
    rows BIGINT, input_tokens BIGINT, output_tokens BIGINT, latency_ms DOUBLE PRECISION,
    status TEXT, attempts BIGINT, error TEXT, request_id TEXT, requester TEXT, origin TEXT,
    client_request_id TEXT, usage_context TEXT, status_code BIGINT, input_chars BIGINT, output_chars BIGINT,
    served_entity TEXT, ttft_ms DOUBLE PRECISION
);
CREATE UNIQUE INDEX usage_by_request ON usage(request_id);
CREATE INDEX usage_by_ts ON usage(ts);
CREATE INDEX usage_by_context ON usage(usage_context);

CREATE TABLE usage_rollup_state (name TEXT PRIMARY KEY, last_rowid BIGINT NOT NULL);
CREATE TABLE usage_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, status_class TEXT NOT NULL,
    requests BIGINT NOT NULL, rows BIGINT NOT NULL, input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, status_class)
);
CREATE TABLE usage_latency_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, bucket INT NOT NULL, requests BIGINT NOT NULL,
    PRIMARY KEY (hour, endpoint, bucket)
);
CREATE TABLE usage_daily (
    day TEXT NOT NULL, endpoint TEXT NOT NULL, requester TEXT NOT NULL, requests BIGINT NOT NULL,
    errors BIGINT NOT NULL, rows BIGINT NOT NULL, input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (day, endpoint, requester)
);

-- Payloads are text, or sealed bytes when a key is configured (the key is never here): both kept as bytes,
-- `sealed` saying which (1: the request, 2: the response).
CREATE TABLE payloads (
    request_id TEXT NOT NULL PRIMARY KEY, client_request_id TEXT, date TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL, status_code BIGINT NOT NULL, execution_time_ms DOUBLE PRECISION,
    request BYTEA, response BYTEA, served_entity_id TEXT NOT NULL, logging_error_codes TEXT, requester TEXT,
    endpoint TEXT NOT NULL, origin TEXT, input_tokens BIGINT, output_tokens BIGINT,
    sealed SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX payloads_by_time ON payloads(endpoint, timestamp_ms);
