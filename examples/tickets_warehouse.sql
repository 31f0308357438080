-- Builds a small support warehouse for the nightly job: a `tickets` table whose messages (a CSV of
-- labelled support messages) arrived over the seven days up to :day.
--
--   aifuncs run examples/tickets_warehouse.sql --db warehouse.duckdb \
--       --param csv=tests/data/support_messages.csv --param day=2026-11-24
CREATE OR REPLACE TABLE tickets AS
SELECT id,
       text AS body,
       CAST(:day AS DATE) - CAST(id % 7 AS INTEGER) + INTERVAL (id * 37 % 1440) MINUTE AS created_at
FROM read_csv(:csv, header = true);

SELECT CAST(created_at AS DATE) AS day, count(*) AS tickets FROM tickets GROUP BY day ORDER BY day;
