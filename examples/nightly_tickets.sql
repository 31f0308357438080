-- The nightly job: classify and summarize one day's support tickets into `ticket_insights`, and report
-- the day's topics. Rerunning a day replaces that day's rows; a run killed half-way resumes from its
-- checkpoint without paying again for answered rows.
--
--   aifuncs run examples/nightly_tickets.sql --db warehouse.duckdb --param day=$(date -d yesterday +%F) \
--       --output ticket_topics.csv --max-cost 5 --max-failed-rows 10
--
-- It uses the default chat and embedding endpoints: offline models out of the box (SmolLM2 and
-- all-MiniLM-L6-v2); point them at hosted ones with aifuncs.endpoints.set_default(...).
CREATE TABLE IF NOT EXISTS ticket_insights (
    day DATE, id BIGINT, topic VARCHAR, sentiment VARCHAR, summary VARCHAR, processed_at TIMESTAMPTZ
);

DELETE FROM ticket_insights WHERE day = CAST(:day AS DATE);

INSERT INTO ticket_insights
SELECT CAST(created_at AS DATE) AS day,
       id,
       ai_classify(body, ['billing', 'shipping', 'product', 'account', 'other']) AS topic,
       ai_analyze_sentiment(body) AS sentiment,
       ai_summarize(body, 12) AS summary,
       now() AS processed_at
FROM tickets
WHERE CAST(created_at AS DATE) = CAST(:day AS DATE);

-- The report (what --output receives): the day's tickets per topic and sentiment.
SELECT topic, sentiment, count(*) AS tickets
FROM ticket_insights
WHERE day = CAST(:day AS DATE)
GROUP BY ALL
ORDER BY tickets DESC, topic, sentiment;
