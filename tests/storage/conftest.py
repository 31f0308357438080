from pg import backend, pg_cluster, pg_url

__all__ = ["backend", "pg_cluster", "pg_url"]
