-- System tables: read-only views over aifuncs state, read fresh on every query.
CREATE OR REPLACE TEMP VIEW aifuncs_endpoints AS
    SELECT unnest(__aifuncs_endpoints(), recursive := true);

-- One row per model request: endpoint, rows, tokens, characters, latency, status, attempts, who asked and
-- from where (sql, pandas, job, rest), the caller's request id and labels. Each principal reads its own
-- requests and those of the endpoints it manages; an admin all.
CREATE OR REPLACE TEMP VIEW aifuncs_usage AS
    SELECT unnest(__aifuncs_usage(), recursive := true);

-- The same rows in the shape of Databricks' system.serving.endpoint_usage.
CREATE OR REPLACE TEMP VIEW aifuncs_endpoint_usage AS
    SELECT client_request_id, request_id AS databricks_request_id, requester, status_code,
           ts AS request_time, input_tokens AS input_token_count, output_tokens AS output_token_count,
           input_chars AS input_character_count, output_chars AS output_character_count,
           json_transform(coalesce(usage_context, '{}'), '"MAP(VARCHAR, VARCHAR)"') AS usage_context,
           false AS request_streaming, served_entity AS served_entity_id, endpoint AS endpoint_name, origin
    FROM aifuncs_usage;

-- One row per job run (`aifuncs run`): job, parameters, times, status, rows, requests, tokens, cost, output.
CREATE OR REPLACE TEMP VIEW aifuncs_runs AS
    SELECT unnest(__aifuncs_runs(), recursive := true);

-- Who may view, query or manage each endpoint, and where each level comes from (direct, a group, admins):
-- every grant of the endpoints one manages, and one's own levels on those one may view.
CREATE OR REPLACE TEMP VIEW aifuncs_permissions AS
    SELECT unnest(__aifuncs_permissions(), recursive := true);

-- Every change to principals, tokens, endpoints, permissions and limits, with who made it, hash-chained:
-- an admin reads all, anyone else its own.
CREATE OR REPLACE TEMP VIEW aifuncs_audit AS
    SELECT unnest(__aifuncs_audit(), recursive := true);

-- Inference tables: one row per model request of the endpoints that log payloads (Databricks' columns plus
-- requester, origin and tokens), refusals (403, 429) as rows without payload. Read as aifuncs_usage is.
CREATE OR REPLACE TEMP VIEW aifuncs_payloads AS
    SELECT unnest(__aifuncs_payloads(), recursive := true);
