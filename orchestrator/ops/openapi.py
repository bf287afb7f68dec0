"""The OpenAPI 3.0 document of the ops JSON API, served at ``/ops/openapi.json``.

Hand-written, so it says exactly what the routes in :mod:`orchestrator.ops.http` accept; a
test checks that every route is documented and every documented path is routed.
"""

from __future__ import annotations

from typing import Any

_UUID = {"type": "string", "format": "uuid"}
_STATES = [
    "pending",
    "running",
    "retrying",
    "unknown",
    "processing",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
]
_KINDS = ["charge", "refund", "email"]


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": _UUID}
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size")
_CURSOR = _query("cursor", {"type": "string"}, "next_cursor of the previous page")
_FILTERS = [
    _query("kind", {"type": "string", "enum": _KINDS}, "job kind"),
    _query("provider", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,100}$"}, "provider"),
    _query(
        "error_code", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,100}$"}, "last error code"
    ),
    _query("since", {"type": "string", "format": "date-time"}, "created at or after"),
    _query("until", {"type": "string", "format": "date-time"}, "created before"),
]
_OBJECT = {"type": "object", "additionalProperties": True}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _OBJECT}},
    }


_ERRORS = {
    "400": _ok("invalid input", {"$ref": "#/components/schemas/Error"}),
    "401": _ok("missing or wrong bearer token", {"$ref": "#/components/schemas/Error"}),
}
_NOT_FOUND = {"404": _ok("no such job", {"$ref": "#/components/schemas/Error"})}
_CONFLICT = {"409": _ok("the job is not dead", {"$ref": "#/components/schemas/Error"})}


def _get(
    summary: str, params: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": _ok(summary), **_ERRORS, **(extra or {})},
        }
    }


def _post(
    summary: str, params: list[dict[str, Any]], body: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": params,
            "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
            "responses": {"200": _ok(summary), **_ERRORS, **extra},
        }
    }


_REASON = {"type": "string", "minLength": 1, "maxLength": 500}
# Replay sends whose outcome was ambiguous (they may have been delivered).
_DUPLICATE_RISK = {"type": "boolean"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "orchestrator ops API",
        "version": "1",
        "description": "Inspect jobs, the dead-letter queue, breakers; replay or discard "
        "dead jobs. Every operation is audited in operator_actions with the X-Ops-Actor name.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/ops/openapi.json": _get("this document", []),
        "/ops/api/counts": _get("live jobs by state and settles ever by state", []),
        "/ops/api/attempts": _get(
            "provider attempts per minute and outcome",
            [_query("window_s", {"type": "integer", "minimum": 60, "maximum": 604800}, "seconds")],
        ),
        "/ops/api/breaker": _get("circuit breaker state per provider", []),
        "/ops/api/status": _get(
            "live workers and the clock leader, from their heartbeats in Redis "
            "(ok is false when no clock leader was seen recently)",
            [],
            {"503": _ok("Redis did not answer", {"$ref": "#/components/schemas/Error"})},
        ),
        "/ops/api/drift": _get(
            "ledger drift recorded by webhooks and audits: rows by kind and the newest rows",
            [_LIMIT],
        ),
        "/ops/api/jobs": _get(
            "jobs, newest first",
            [
                _query("state", {"type": "string", "enum": _STATES}, "job state"),
                *_FILTERS,
                _LIMIT,
                _CURSOR,
            ],
        ),
        "/ops/api/jobs/{job_id}": _get(
            "one job with attempts, transitions, actions", [_JOB_ID], _NOT_FOUND
        ),
        "/ops/api/dlq": _get("dead jobs, newest first", [*_FILTERS, _LIMIT, _CURSOR]),
        "/ops/api/dlq/broker": _get(
            "messages dramatiq dead-lettered, as reconciled by the clock",
            [_query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "how many")],
        ),
        "/ops/api/dlq/replay": _post(
            "replay dead jobs matching a filter (bounded, rate-limited)",
            [],
            {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": _KINDS},
                    "provider": {"type": "string"},
                    "error_code": {"type": "string"},
                    "since": {"type": "string", "format": "date-time"},
                    "until": {"type": "string", "format": "date-time"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
                    "rate_per_s": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "maximum": 1000,
                    },
                    "dry_run": {"type": "boolean"},
                    "reason": _REASON,
                    "accept_duplicate_risk": _DUPLICATE_RISK,
                },
            },
            {},
        ),
        "/ops/api/dlq/{job_id}": _get("one dead job", [_JOB_ID], _NOT_FOUND),
        "/ops/api/dlq/{job_id}/replay": _post(
            "replay one dead job (or adopt its provider-side success); a send whose outcome "
            "was ambiguous is skipped unless accept_duplicate_risk is true (audited)",
            [_JOB_ID],
            {
                "type": "object",
                "properties": {"reason": _REASON, "accept_duplicate_risk": _DUPLICATE_RISK},
            },
            _NOT_FOUND,
        ),
        "/ops/api/dlq/{job_id}/discard": _post(
            "discard one dead job (dead -> cancelled); refused (409) for a charge or refund the "
            "provider holds a success or pending object for, unless force is true (audited)",
            [_JOB_ID],
            {
                "type": "object",
                "properties": {"reason": _REASON, "force": {"type": "boolean"}},
                "required": ["reason"],
            },
            {**_NOT_FOUND, **_CONFLICT},
        ),
    },
}
