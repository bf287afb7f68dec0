"""Input validation, shaped like Stripe's own rules, so bad requests fail before any write.

Every check raises :class:`~orchestrator.errors.ValidationError` (a ``ValueError``) whose message
names the parameter and never echoes a value that could be a secret or card data.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import ValidationError

# Stripe's maximum charge amount: 8 digits of the currency's minor unit.
MAX_AMOUNT_MINOR = 99_999_999
# Stripe caps idempotency keys at 255 characters.
MAX_KEY_LENGTH = 255
# Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
# Metadata key the orchestrator sets on every provider object to find it again.
JOB_ID_METADATA_KEY = "orchestrator_job_id"

# ISO 4217 active codes (funds and precious-metal codes excluded), lower case as Stripe uses them.
ISO_4217 = frozenset(
    """
    aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd btn bwp
    byn bzd cad cdf chf clp cny cop crc cup cve czk djf dkk dop dzd egp ern etb eur fjd fkp gbp
    gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr iqd irr isk jmd jod jpy kes kgs khr
    kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr mwk
    mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar
    sbd scr sdg sek sgd shp sle sll sos srd ssp stn svc syp szl thb tjs tmt tnd top try ttd twd
    tzs uah ugx usd uyu uzs ves vnd vuv wst xaf xcd xcg xof xpf yer zar zmw zwg zwl
    """.split()
)

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-.:]{1,255}$")


def amount(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("amount must be an integer number of minor units")
    if not 1 <= value <= MAX_AMOUNT_MINOR:
        raise ValidationError(f"amount must be between 1 and {MAX_AMOUNT_MINOR}")
    return value


def currency(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in ISO_4217:
        raise ValidationError("currency must be an ISO 4217 code such as 'usd'")
    return value.lower()


def idempotency_key(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("idempotency_key must be a non-empty string")
    if len(value) > MAX_KEY_LENGTH:
        raise ValidationError(f"idempotency_key must be at most {MAX_KEY_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValidationError("idempotency_key must not contain control characters")
    return value


def token(name: str, value: object, *, required: bool) -> str | None:
    """An provider object id such as a customer or payment method id."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise ValidationError(f"{name} must be a provider id (letters, digits, _-.:, 1-255)")
    return value


def metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("metadata must be a mapping of strings to strings")
    if len(value) > MAX_METADATA_KEYS:
        raise ValidationError(f"metadata must have at most {MAX_METADATA_KEYS} keys")
    clean: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY_LENGTH:
            raise ValidationError(
                f"metadata keys must be strings of 1-{MAX_METADATA_KEY_LENGTH} characters"
            )
        if "[" in key or "]" in key:
            raise ValidationError("metadata keys must not contain square brackets")
        if key == JOB_ID_METADATA_KEY:
            raise ValidationError(f"metadata key {JOB_ID_METADATA_KEY!r} is reserved")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_LENGTH:
            raise ValidationError(
                f"metadata[{key!r}] must be a string of at most {MAX_METADATA_VALUE_LENGTH} "
                "characters"
            )
        clean[key] = item
    return clean


def text(name: str, value: object, *, max_length: int, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"{name} must be a non-empty string of at most {max_length} characters"
        )
    return value


def fingerprint(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the request: equal requests, equal fingerprints."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- email (SendGrid's v3 mail send) -----------------------------------------------------------

# RFC 5321 caps a forward path at 256 octets including the angle brackets: 254 for the address.
MAX_EMAIL_CHARS = 254
# SendGrid accepts at most 1000 recipients per personalization.
MAX_RECIPIENTS = 1000
# RFC 5322 caps a header line at 998 characters; the subject is one header.
MAX_SUBJECT_CHARS = 998
# Bodies are stored in the job row (jsonb) until sent: 1 MB keeps rows small; SendGrid's own
# limit is 30 MB for the whole message.
MAX_BODY_CHARS = 1_000_000
# SendGrid rejects dynamic_template_data over 10,000 bytes.
MAX_TEMPLATE_DATA_BYTES = 10_000

# A pragmatic address check: one @, a local part and a dotted domain, no spaces or controls.
_EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# SendGrid template ids: dynamic ("d-" + 32 hex) or legacy (a UUID).
_TEMPLATE_ID_RE = re.compile(r"^(d-[0-9a-f]{32}|[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12})$")


def email(name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_EMAIL_CHARS or not _EMAIL_RE.match(value):
        raise ValidationError(f"{name} must be an email address such as 'ana@example.com'")
    return value


def recipients(value: object) -> list[str]:
    """One address, or a non-empty sequence of distinct addresses (order kept)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_RECIPIENTS:
        raise ValidationError(f"to must be an email address or a list of 1-{MAX_RECIPIENTS}")
    clean = [email("to", item) for item in items]
    if len({a.lower() for a in clean}) != len(clean):
        raise ValidationError("to must not repeat an address")
    return clean


def template_id(value: object) -> str:
    if not isinstance(value, str) or not _TEMPLATE_ID_RE.match(value):
        raise ValidationError("template must be a SendGrid template id such as 'd-<32 hex>'")
    return value


def template_data(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError("template_data must be a mapping with string keys")
    try:
        encoded = json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationError("template_data must be JSON-serializable") from None
    if len(encoded.encode()) > MAX_TEMPLATE_DATA_BYTES:
        raise ValidationError(f"template_data must be at most {MAX_TEMPLATE_DATA_BYTES} bytes")
    clean: dict[str, Any] = json.loads(encoded)
    return clean
