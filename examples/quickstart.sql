-- The quickstart: score wines with a scikit-learn model registered in MLflow, straight from SQL.
-- Run it with `make demo` (it creates the model, the endpoint and the wines table first).

-- 1. The endpoint catalog, as a system table.
SELECT name, kind, version, options FROM aifuncs_endpoints;

-- 2. ai_query with a STRUCT request: its fields are the model's input columns. The result type
--    (BIGINT, the predicted cultivar) comes from the model's MLflow signature.
SELECT id, cultivar AS actual,
       ai_query('wine-classifier',
                struct_pack(alcohol, malic_acid, flavanoids, color_intensity, proline)) AS predicted
FROM wines
ORDER BY id
LIMIT 8;

-- 3. Accuracy over the whole table: one vectorized model call per 2,048-row batch.
SELECT count(*) AS wines,
       avg((ai_query('wine-classifier',
                     struct_pack(alcohol, malic_acid, flavanoids, color_intensity, proline))
            = cultivar)::INT) AS accuracy
FROM wines;

-- 4. Databricks' named arguments: returnType converts the answer, failOnError => false returns
--    STRUCT(result, errorMessage) and keeps failures per row. Every fourth wine below has no proline
--    value; scikit-learn rejects the NaN, and only those rows carry its message.
SELECT id, answer.result, left(answer.errorMessage, 60) AS error
FROM (
    SELECT id,
           ai_query('wine-classifier',
                    struct_pack(alcohol, malic_acid, flavanoids, color_intensity,
                                proline := CASE WHEN id % 4 = 0 THEN NULL ELSE proline END),
                    returnType => 'STRING', failOnError => false) AS answer
    FROM wines
)
ORDER BY id
LIMIT 6;

-- 5. Task functions need no prompt and no endpoint: offline, they run on built-in local models
--    (all-MiniLM-L6-v2 embeddings for one-label tasks and similarity, SmolLM2 for text).
SELECT review,
       ai_analyze_sentiment(review)                                   AS sentiment,
       ai_classify(review, ['taste', 'price', 'delivery'])            AS topic,
       round(ai_similarity(review, 'the wine tasted wonderful'), 2)   AS like_praise
FROM (VALUES ('I love this wine, it tastes wonderful!'),
             ('Far too expensive for what it is.'),
             ('The delivery was late and the bottle broken.')) AS t(review);
