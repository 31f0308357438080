"""AI functions on Apache Spark: `aifuncs.spark.sql(spark, query)` runs Databricks SQL with `ai_query` and the
task functions on a Spark session (local, a cluster, or Spark Connect) and returns a DataFrame.

    from pyspark.sql import SparkSession
    import aifuncs.spark
    spark = SparkSession.builder.getOrCreate()
    df = aifuncs.spark.sql(spark, "SELECT id, ai_classify(body, array('bug', 'billing')) AS topic FROM tickets")

Needs `pip install 'aifuncs[spark]'` (pyspark 4.1 or later), and aifuncs on every executor.
"""

from __future__ import annotations

from aifuncs.engines.spark import local_session, sql, workers_of

__all__ = ["local_session", "sql", "workers_of"]
