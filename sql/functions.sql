-- AI functions on a plain DuckDB connection (aifuncs.connect()).
-- Python UDFs fix their types at registration and take no named arguments, so ai_query here is a
-- macro: it accepts Databricks' named arguments (=> or :=) and passes the request as JSON to one
-- generic function that resolves each row's endpoint. The answer is VARCHAR (JSON text for nested
-- values; with failOnError false, the JSON of {result, errorMessage}). aifuncs.sql() rewrites calls
-- into typed functions instead.
CREATE OR REPLACE TEMP MACRO ai_query(endpoint, request, returnType := NULL, failOnError := true,
                                      modelParameters := NULL, responseFormat := NULL,
                                      cache := NULL) AS
    __aifuncs_ai_query(endpoint, to_json(request), returnType, failOnError,
                       to_json(modelParameters), responseFormat, cache);
