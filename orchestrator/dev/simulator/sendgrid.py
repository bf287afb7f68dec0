"""The SendGrid endpoint: ``POST /v3/mail/send`` with SendGrid's validation errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.dev.simulator.common import Response, json_response, sendgrid_error
from orchestrator.dev.simulator.state import State


def _validate_mail(body: object) -> list[tuple[str, str | None]]:
    """Return SendGrid-style (message, field) errors for a v3 mail/send body."""
    if not isinstance(body, dict):
        return [("Bad Request", None)]
    errors = _validate_personalizations(body.get("personalizations"))
    sender = body.get("from")
    if not isinstance(sender, dict):
        errors.append(
            (
                "The from object must be provided for every email send. It is an object that "
                "requires an email parameter, but may also contain a name parameter.",
                "from",
            )
        )
    elif not _is_email(sender.get("email")):
        errors.append(("The from email does not contain a valid address.", "from.email"))
    errors.extend(_validate_content(body))
    return errors


def _validate_personalizations(raw: object) -> list[tuple[str, str | None]]:
    if not isinstance(raw, list) or not raw:
        return [
            (
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
            )
        ]
    errors: list[tuple[str, str | None]] = []
    for index, item in enumerate(raw):
        to = item.get("to") if isinstance(item, dict) else None
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(r, dict) and _is_email(r.get("email")) for r in to)
        ):
            errors.append(
                (
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{index}.to",
                )
            )
    return errors


def _validate_content(body: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    if body.get("template_id"):
        return []
    errors: list[tuple[str, str | None]] = []
    personalizations = body.get("personalizations")
    every_has_subject = isinstance(personalizations, list) and all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    )
    if not body.get("subject") and not every_has_subject:
        errors.append(
            (
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        )
    content = body.get("content")
    if not isinstance(content, list) or not content:
        errors.append(
            (
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block. We typically suggest both "
                "text/plain and text/html blocks are included, but only one block is required.",
                "content",
            )
        )
    return errors


def _is_email(value: object) -> bool:
    return isinstance(value, str) and "@" in value and not value.startswith("@")


def send_mail(state: State, body: bytes) -> Response:
    try:
        payload: object = json.loads(body or b"null")
    except ValueError:
        return sendgrid_error(400, "Bad Request")
    errors = _validate_mail(payload)
    if errors:
        return json_response(
            400, {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
        )
    assert isinstance(payload, dict)
    message_id = state.new_id("", 22)
    with state.lock:
        state.mail.append({**payload, "message_id": message_id})
    return Response(202, b"", {"X-Message-Id": message_id}, saveable=True)
