"""The system tables (`aifuncs_endpoints`, `aifuncs_usage`, `aifuncs_runs`, `aifuncs_permissions`,
`aifuncs_audit`, `aifuncs_payloads`): each a snapshot function returning the rows its session may read."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from aifuncs._runs import runs as list_runs
from aifuncs._types import arrow_type
from aifuncs.catalog import Endpoint
from aifuncs.governance import AuditLog, Identity
from aifuncs.governance.payloads import payload_log
from aifuncs.governance.visibility import own_since, readable_rows
from aifuncs.session import Session

ENDPOINTS_TYPE = (
    "STRUCT(name VARCHAR, kind VARCHAR, version INTEGER, description VARCHAR, options VARCHAR,"
    " created_at TIMESTAMP, updated_at TIMESTAMP, served_entities VARCHAR)[]"
)

USAGE_TYPE = (
    "STRUCT(ts TIMESTAMP, endpoint VARCHAR, endpoint_version INTEGER, kind VARCHAR, function VARCHAR,"
    " rows INTEGER, input_tokens BIGINT, output_tokens BIGINT, latency_ms DOUBLE, status VARCHAR,"
    " attempts INTEGER, error VARCHAR, request_id VARCHAR, requester VARCHAR, origin VARCHAR,"
    " client_request_id VARCHAR, usage_context VARCHAR, status_code INTEGER, input_chars BIGINT,"
    " output_chars BIGINT, served_entity VARCHAR, ttft_ms DOUBLE)[]"
)


RUNS_TYPE = (
    "STRUCT(id BIGINT, job VARCHAR, path VARCHAR, params VARCHAR, db VARCHAR, output VARCHAR, status VARCHAR,"
    " exit_code INTEGER, started_at TIMESTAMP, ended_at TIMESTAMP, rows BIGINT, failed_rows BIGINT,"
    " requests BIGINT, tokens BIGINT, cost_usd DOUBLE, output_rows BIGINT, resumed_from BIGINT, error VARCHAR,"
    " principal VARCHAR)[]"
)


def _runs_snapshot(identity: Identity) -> Callable[[], pa.Array]:
    """The run ledger as `identity` may read it: its own runs; an admin every run."""

    def snapshot() -> pa.Array:
        me = identity.principal
        rows = list_runs(principal=None if me.admin else me.name)
        if not me.admin:  # nor its runs
            rows = [r for r in rows if own_since(me, datetime.fromisoformat(r["started_at"]))]
        for row in rows:
            row["params"] = json.dumps(row["params"], sort_keys=True)
            for key in ("started_at", "ended_at"):
                row[key] = datetime.fromisoformat(row[key]).replace(tzinfo=None) if row[key] else None
        return pa.array([rows], arrow_type(RUNS_TYPE))

    return snapshot


def _usage_snapshot(session: Session) -> Callable[[], pa.Array]:
    """The usage log as `identity` may read it: its own requests, all of the endpoints it manages; an
    admin everything."""

    def snapshot() -> pa.Array:
        principal = session.principal
        managed = {} if principal.admin else session.catalog.managed()
        rows = readable_rows(session.runtime.usage.read(), principal, managed, _written_at)
        for row in rows:
            row["ts"] = datetime.fromisoformat(row["ts"]).replace(tzinfo=None)
        return pa.array([rows], arrow_type(USAGE_TYPE))

    return snapshot


def _written_at(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["ts"])


def _logged_at(row: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(row["timestamp_ms"] / 1000, UTC)


PAYLOADS_TYPE = (
    "STRUCT(request_id VARCHAR, client_request_id VARCHAR, date DATE, timestamp_ms BIGINT, status_code INTEGER,"
    " execution_time_ms DOUBLE, request VARCHAR, response VARCHAR, served_entity_id VARCHAR,"
    " logging_error_codes VARCHAR, requester VARCHAR, endpoint VARCHAR, origin VARCHAR, input_tokens BIGINT,"
    " output_tokens BIGINT)[]"
)


def _payloads_snapshot(session: Session) -> Callable[[], pa.Array]:
    """The inference tables as `identity` may read them: its own requests, all of the endpoints it manages;
    an admin everything."""

    def snapshot() -> pa.Array:
        principal = session.principal
        managed = {} if principal.admin else session.catalog.managed()
        rows = readable_rows(payload_log().read(session.home / "payloads.db"), principal, managed, _logged_at)
        for row in rows:
            row["date"] = datetime.fromisoformat(row["date"]).date()
        return pa.array([rows], arrow_type(PAYLOADS_TYPE))

    return snapshot


AUDIT_TYPE = (
    "STRUCT(id BIGINT, ts TIMESTAMP, actor VARCHAR, action VARCHAR, target VARCHAR, details VARCHAR,"
    " hash VARCHAR)[]"
)


def _audit_snapshot(identity: Identity) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        me = identity.principal
        entries = AuditLog(identity.home / "catalog.db").entries(None if me.admin else me.name)
        if not me.admin:  # a deleted principal's entries are not those of one made again under its name
            entries = [e for e in entries if own_since(me, datetime.fromisoformat(e.ts))]
        rows = [
            {**dataclasses.asdict(e), "details": json.dumps(e.details, sort_keys=True),
             "ts": datetime.fromisoformat(e.ts).replace(tzinfo=None)}
            for e in entries
        ]  # fmt: skip
        return pa.array([rows], arrow_type(AUDIT_TYPE))

    return snapshot


PERMISSIONS_TYPE = (
    "STRUCT(endpoint VARCHAR, principal VARCHAR, principal_type VARCHAR, permission_level VARCHAR,"
    " inherited BOOLEAN, inherited_from VARCHAR)[]"
)


def _permissions_snapshot(session: Session) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        return pa.array([session.catalog.permission_rows()], arrow_type(PERMISSIONS_TYPE))

    return snapshot


def _endpoints_snapshot(session: Session) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        return _endpoint_rows(session.catalog.list())

    return snapshot


def _endpoint_rows(endpoints: list[Endpoint]) -> pa.Array:
    rows = [
        {
            "name": e.name,
            "kind": e.kind,
            "version": e.version,
            "description": e.description,
            "options": json.dumps(e.options, sort_keys=True),
            "created_at": e.created_at.replace(tzinfo=None) if e.created_at else None,
            "updated_at": e.updated_at.replace(tzinfo=None) if e.updated_at else None,
            # JSON: each entity's name, kind, options and traffic_percentage (an endpoint of one model is its
            # own sole entity, at 100); text, as `options` is, so the view's recursive unnest keeps one row each
            "served_entities": json.dumps([s.to_dict() for s in e.served_entities()], sort_keys=True),
        }
        for e in endpoints
    ]
    return pa.array([rows], arrow_type(ENDPOINTS_TYPE))
