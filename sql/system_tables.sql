-- System tables: read-only views over aifuncs state, read fresh on every query.
CREATE OR REPLACE TEMP VIEW aifuncs_endpoints AS
    SELECT unnest(__aifuncs_endpoints(), recursive := true);

-- One row per model request: endpoint, rows, tokens, latency, status, attempts.
CREATE OR REPLACE TEMP VIEW aifuncs_usage AS
    SELECT unnest(__aifuncs_usage(), recursive := true);

-- One row per job run (`aifuncs run`): job, parameters, times, status, rows, requests, tokens, cost, output.
CREATE OR REPLACE TEMP VIEW aifuncs_runs AS
    SELECT unnest(__aifuncs_runs(), recursive := true);

-- Who may view, query or manage each endpoint, and where each level comes from (direct, a group, admins):
-- every grant of the endpoints one manages, and one's own levels on those one may view.
CREATE OR REPLACE TEMP VIEW aifuncs_permissions AS
    SELECT unnest(__aifuncs_permissions(), recursive := true);
