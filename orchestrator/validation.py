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
