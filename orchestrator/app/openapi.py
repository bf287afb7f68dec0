"""The OpenAPI 3.0 document of the app HTTP API (``/api/v1``), served at
``/api/v1/openapi.json``.

Hand-written and typed: every request body is a closed object (``additionalProperties:
false``) whose properties each have a type, and :mod:`orchestrator.app.http` reads the same
request schemas to refuse unknown fields, missing required ones and wrongly typed values
before the library's own validation runs, so the document and the server cannot drift.
``null`` for an optional field means "not given" (its default).
"""

from __future__ import annotations

from typing import Any

from orchestrator import validation as v
from orchestrator.app.requests import MAX_DESCRIPTION_CHARS, MAX_REASON_CHARS

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
_KINDS = ["charge", "refund", "email", "capture", "void"]


def _opt(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional property: ``null`` or absent means not given."""
    return {**schema, "nullable": True, "description": description}


def _req(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_UUID = {"type": "string", "format": "uuid"}
_AMOUNT = {"type": "integer", "minimum": 1, "maximum": v.MAX_AMOUNT_MINOR}
_PROVIDER_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,255}$"}
_ACCOUNT = {"type": "string", "pattern": "^acct_[A-Za-z0-9]{1,250}$"}
_PROVIDER_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"}
_EMAIL = {"type": "string", "format": "email", "maxLength": v.MAX_EMAIL_CHARS}
_METADATA = {
    "type": "object",
    "maxProperties": v.MAX_METADATA_KEYS,
    "additionalProperties": {"type": "string", "maxLength": v.MAX_METADATA_VALUE_LENGTH},
}

CHARGE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["amount", "currency", "payment_method"],
    "properties": {
        "amount": _req(_AMOUNT, "integer minor units of the currency (cents for usd)"),
        "currency": _req(
            {"type": "string", "enum": sorted(v.ISO_4217)},
            "ISO 4217 code in lower case, e.g. usd (upper case is accepted too)",
        ),
        "customer": _opt(_PROVIDER_ID, "Stripe customer id (cus_...)"),
        "payment_method": _req(_PROVIDER_ID, "Stripe payment method id (pm_...), never card data"),
        "metadata": _opt(_METADATA, "string to string, copied to the PaymentIntent"),
        "description": _opt(
            {"type": "string", "minLength": 1, "maxLength": MAX_DESCRIPTION_CHARS}, "description"
        ),
        "return_url": _opt(
            {"type": "string", "maxLength": v.MAX_RETURN_URL_CHARS},
            "on-session charge: where the customer returns after authenticating",
        ),
        "stripe_account": _opt(_ACCOUNT, "Connect: charge on this account (Stripe-Account)"),
        "capture": _opt(
            {"type": "boolean", "default": True},
            "false: only authorize; capture or void the charge later",
        ),
        "capture_method": _opt(
            {"type": "string", "enum": list(v.CAPTURE_METHODS)}, "Stripe capture_method"
        ),
        "statement_descriptor_suffix": _opt(
            {"type": "string", "minLength": 1, "maxLength": v.MAX_DESCRIPTOR_SUFFIX_CHARS},
            "Stripe statement_descriptor_suffix",
        ),
        "receipt_email": _opt(_EMAIL, "Stripe receipt_email"),
        "payment_method_types": _opt(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": v.MAX_PAYMENT_METHOD_TYPES,
                "items": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
            },
            "Stripe payment_method_types, e.g. ['card']",
        ),
        "transfer_data": _opt(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["destination"],
                "properties": {"destination": _ACCOUNT, "amount": _AMOUNT},
            },
            "Connect destination charge",
        ),
        "application_fee_amount": _opt(
            {"type": "integer", "minimum": 0, "maximum": v.MAX_AMOUNT_MINOR},
            "Connect fee (needs stripe_account, transfer_data or on_behalf_of)",
        ),
        "on_behalf_of": _opt(_ACCOUNT, "Connect settlement merchant"),
        "provider": _opt(
            _PROVIDER_NAME,
            "a registered payment provider; default: by currency (ORCHESTRATOR_ROUTES)",
        ),
        "failover": _opt(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["provider", "payment_method"],
                "properties": {
                    "provider": _PROVIDER_NAME,
                    "customer": _PROVIDER_ID,
                    "payment_method": _PROVIDER_ID,
                },
            },
            "second provider (with its own tokens), used only when the first provably never "
            "executed the charge",
        ),
        "provider_options": _opt(
            {"type": "object", "additionalProperties": True},
            "fields the provider takes that are not named here, checked by the provider",
        ),
    },
}

REFUND: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["charge_job_id"],
    "properties": {
        "charge_job_id": _req(_UUID, "id of a succeeded charge job"),
        "amount": _opt(_AMOUNT, "minor units; null: all that remains refundable"),
        "metadata": _opt(_METADATA, "string to string, copied to the Refund"),
    },
}

EMAIL: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "properties": {
        "to": _req(
            {
                "oneOf": [
                    _EMAIL,
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": v.MAX_RECIPIENTS,
                        "items": _EMAIL,
                    },
                ]
            },
            "one address or a list of distinct addresses",
        ),
        "subject": _opt(
            {"type": "string", "minLength": 1, "maxLength": v.MAX_SUBJECT_CHARS},
            "one line; required with body",
        ),
        "body": _opt(
            {"type": "string", "minLength": 1, "maxLength": v.MAX_BODY_CHARS},
            "plain text; exactly one of body and template",
        ),
        "template": _opt(
            {
                "type": "string",
                "pattern": "^[A-Za-z0-9_.:-]{1,256}$",
            },
            "the provider's template: SendGrid's id (d-<32 hex>, or a legacy UUID), an SES "
            "template name",
        ),
        "template_data": _opt(
            {"type": "object", "additionalProperties": True}, "dynamic template data"
        ),
        "provider": _opt(
            _PROVIDER_NAME, "a registered email provider; default: ORCHESTRATOR_EMAIL_PROVIDER"
        ),
        "from_email": _opt(_EMAIL, "sender; default ORCHESTRATOR_EMAIL_FROM"),
        "at_least_once": _opt(
            {"type": "boolean", "default": False},
            "true: retry after an ambiguous outcome (may deliver twice)",
        ),
    },
}

CANCEL: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reason"],
    "properties": {
        "reason": _req(
            {"type": "string", "minLength": 1, "maxLength": MAX_REASON_CHARS},
            "why, recorded with the transition",
        )
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_TIME = {"type": "string", "format": "date-time"}
JOB: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": _UUID,
        "kind": {"type": "string", "enum": _KINDS},
        "state": {"type": "string", "enum": _STATES},
        "provider": _STR,
        "idempotency_key": _STR,
        "amount": _nullable(_INT),
        "currency": _nullable(_STR),
        "customer": _nullable(_STR),
        "parent_job_id": _nullable(_UUID),
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "attempts": _INT,
        "max_attempts": _INT,
        "refunded_amount": _INT,
        "captured": {
            "type": "boolean",
            "description": "a charge whose money is taken (false for an authorization)",
        },
        "captured_amount": _nullable(
            {
                "type": "integer",
                "description": "charge(capture=false): 0 until captured, then the amount "
                "captured; null for a charge captured when it succeeded",
            }
        ),
        "capture_before": _nullable(
            {**_TIME, "description": "when an uncaptured authorization expires"}
        ),
        "provider_ref": _nullable(_STR),
        "provider_status": _nullable(_STR),
        "provider_details": _nullable({"type": "object", "additionalProperties": True}),
        "last_error_code": _nullable(_STR),
        "last_error": _nullable(_STR),
        "dead_reason": _nullable(_STR),
        "next_attempt_at": _TIME,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
}
JOB["required"] = list(JOB["properties"])

ERROR_CODES = [
    "unauthorized",
    "invalid_request",
    "not_found",
    "conflict",
    "idempotency_conflict",
    "too_large",
]
ERROR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, for a person"},
        "code": {"type": "string", "enum": ERROR_CODES},
    },
}


def _json(description: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        **extra,
    }


_LOCATION = {
    "headers": {
        "Location": {"description": "the job's URL", "schema": {"type": "string"}},
    }
}
_E400 = {"400": _json("invalid input (message says which field)", "Error")}
_E401 = {"401": _json("missing or wrong bearer token", "Error")}
_E404 = {"404": _json("no such job", "Error")}
_E409 = {"409": _json("idempotency conflict, or the job's state forbids it", "Error")}
_E413 = {"413": _json("request body too large", "Error")}
_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": v.MAX_KEY_LENGTH},
    "description": "the job's idempotency key: the same key and body give the same job",
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": _UUID}


def _create(summary: str, schema: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_KEY],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "201": _json("the job, created by this request", "Job", **_LOCATION),
                "200": _json("the job this key and body already made", "Job", **_LOCATION),
                **_E400,
                **_E401,
                **_E404,
                **_E409,
                **_E413,
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "orchestrator app API",
        "version": "1",
        "description": "Charges, refunds and emails as durable jobs for services in any "
        "language. Every POST needs an Idempotency-Key header: the same key and body return "
        "the same job (201 the first time, 200 after), the same key with another body is a "
        "409. A job runs in the background: poll GET /api/v1/jobs/{job_id} for its state.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "ChargeRequest": CHARGE,
            "RefundRequest": REFUND,
            "EmailRequest": EMAIL,
            "CancelRequest": CANCEL,
            "Job": JOB,
            "Error": ERROR,
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {
                    "200": {
                        "description": "this document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_E401,
                },
            }
        },
        "/api/v1/charges": _create("charge a customer (a Stripe PaymentIntent)", "ChargeRequest"),
        "/api/v1/refunds": _create("refund a succeeded charge, all or part", "RefundRequest"),
        "/api/v1/emails": _create("send an email through SendGrid", "EmailRequest"),
        "/api/v1/jobs/{job_id}": {
            "get": {
                "summary": "one job",
                "parameters": [_JOB_ID],
                "responses": {"200": _json("the job", "Job"), **_E400, **_E401, **_E404},
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "cancel a job that has not run yet (pending or retrying: the job, "
                "cancelled), or void an uncaptured authorization (a void job that releases it); "
                "a job already cancelled answers 200 with it, so a retried cancel gets the same "
                "answer",
                "parameters": [
                    _JOB_ID,
                    {
                        **_KEY,
                        "description": "required for uniformity with the other POSTs; the "
                        "cancel's idempotency comes from the job's state, not from the key",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CancelRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json("the cancelled job, or the void job of an authorization", "Job"),
                    **_E400,
                    **_E401,
                    **_E404,
                    **_E409,
                    **_E413,
                },
            }
        },
    },
}
