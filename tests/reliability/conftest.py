"""Fixtures of the reliability tests: the security suite's real server (`secured`: four principals, an upstream
that records what it receives) and `serve`, for another server of the same home."""

from security.conftest import secured, serve  # noqa: F401 - fixtures, found by pytest under these names
