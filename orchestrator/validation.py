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
# Metadata key carrying the key generation of the request that made an object, so a lookup
# tells the current generation's failure from an older one's.
KEY_GENERATION_METADATA_KEY = "orchestrator_key_generation"
RESERVED_METADATA_KEYS = frozenset({JOB_ID_METADATA_KEY, KEY_GENERATION_METADATA_KEY})

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
# The shape of a card number: 12-19 digits, optionally grouped by spaces or dashes.
_PAN_SHAPE_RE = re.compile(r"^\d(?:[ -]?\d){11,18}$")


def looks_like_pan(value: str) -> bool:
    """A Luhn-valid 12-19 digit number, spaces and dashes allowed: card data, which must never
    be stored, logged or echoed (pass a payment method id instead)."""
    if not _PAN_SHAPE_RE.match(value):
        return False
    digits = [int(ch) for ch in value if ch.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


def no_nul(name: str, value: str) -> str:
    """PostgreSQL text cannot hold NUL: refuse it here rather than fail at the insert."""
    if "\x00" in value:
        raise ValidationError(f"{name} must not contain NUL characters")
    return value


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
    if isinstance(value, str) and looks_like_pan(value):
        raise ValidationError(
            f"{name} looks like a card number: pass a provider id such as pm_..., never card data"
        )
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
        no_nul("metadata keys", key)
        if "[" in key or "]" in key:
            raise ValidationError("metadata keys must not contain square brackets")
        if key in RESERVED_METADATA_KEYS:
            raise ValidationError(f"metadata key {key!r} is reserved")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_LENGTH:
            raise ValidationError(
                f"metadata[{key!r}] must be a string of at most {MAX_METADATA_VALUE_LENGTH} "
                "characters"
            )
        clean[key] = no_nul(f"metadata[{key!r}]", item)
    return clean


def text(name: str, value: object, *, max_length: int, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"{name} must be a non-empty string of at most {max_length} characters"
        )
    return no_nul(name, value)


def fingerprint(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the request: equal requests, equal fingerprints."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- PaymentIntent options (Stripe's create parameters) ---------------------------------------

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
# Stripe: the suffix and the account's prefix together make at most 22 characters; the
# suffix alone may never pass 22, and the characters < > \ ' " * are refused.
MAX_DESCRIPTOR_SUFFIX_CHARS = 22
MAX_RETURN_URL_CHARS = 2048
MAX_PAYMENT_METHOD_TYPES = 30
_ACCOUNT_RE = re.compile(r"^acct_[A-Za-z0-9]{1,250}$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s\x00-\x1f\x7f]+$")
_DESCRIPTOR_RE = re.compile(r"^[\x20-\x7e]+$")
_PM_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def account(name: str, value: object) -> str | None:
    """A Connect account id (``acct_...``), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ACCOUNT_RE.match(value):
        raise ValidationError(f"{name} must be a Stripe account id (acct_...)")
    return value


def charge_options(amount_minor: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """The optional PaymentIntent fields of a charge, checked as Stripe checks them; only those
    given are returned (so a request without them keeps the fingerprint it always had)."""
    out: dict[str, Any] = {}
    if (url := options.get("return_url")) is not None:
        if not isinstance(url, str) or len(url) > MAX_RETURN_URL_CHARS or not _URL_RE.match(url):
            raise ValidationError(
                f"return_url must be an absolute URL of at most {MAX_RETURN_URL_CHARS} characters"
            )
        out["return_url"] = url
    if (
        method := capture_method(options.get("capture"), options.get("capture_method"))
    ) is not None:
        out["capture_method"] = method
    if (suffix := options.get("statement_descriptor_suffix")) is not None:
        out["statement_descriptor_suffix"] = _descriptor_suffix(suffix)
    if (receipt := options.get("receipt_email")) is not None:
        out["receipt_email"] = email("receipt_email", receipt)
    if (types := options.get("payment_method_types")) is not None:
        out["payment_method_types"] = _payment_method_types(types)
    for name in ("stripe_account", "on_behalf_of"):
        if (acct := account(name, options.get(name))) is not None:
            out[name] = acct
    if (transfer := options.get("transfer_data")) is not None:
        out["transfer_data"] = _transfer_data(amount_minor, transfer)
    if (fee := options.get("application_fee_amount")) is not None:
        if isinstance(fee, bool) or not isinstance(fee, int) or not 0 <= fee <= amount_minor:
            raise ValidationError("application_fee_amount must be an integer from 0 to amount")
        if not {"stripe_account", "transfer_data", "on_behalf_of"} & out.keys():
            raise ValidationError(
                "application_fee_amount needs a connected account: stripe_account, "
                "transfer_data or on_behalf_of"
            )
        out["application_fee_amount"] = fee
    return out


def capture_method(capture: object, method: object) -> str | None:
    """The ``capture_method`` of a charge from ``capture`` (None: not said) and the
    pass-through ``capture_method``: ``capture=False`` is ``capture_method="manual"``
    (authorize only), ``capture=True`` any automatic method; contradictions are refused."""
    if method is not None and method not in CAPTURE_METHODS:
        raise ValidationError(f"capture_method must be one of {', '.join(CAPTURE_METHODS)}")
    if capture is None:
        return None if method is None else str(method)
    if not isinstance(capture, bool):
        raise ValidationError("capture must be True or False")
    if capture is False:
        if method not in (None, "manual"):
            raise ValidationError(f"capture=False contradicts capture_method={method!r}")
        return "manual"
    if method == "manual":
        raise ValidationError("capture=True contradicts capture_method='manual'")
    return None if method is None else str(method)


def _descriptor_suffix(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_DESCRIPTOR_SUFFIX_CHARS
        or not _DESCRIPTOR_RE.match(value)
        or any(ch in value for ch in "<>\\'\"*")
        or not any(ch.isalpha() for ch in value)
    ):
        raise ValidationError(
            f"statement_descriptor_suffix must be 1-{MAX_DESCRIPTOR_SUFFIX_CHARS} printable "
            "ASCII characters with at least one letter and none of < > \\ ' \" *"
        )
    return value


def _payment_method_types(value: object) -> list[str]:
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple)
        or not 1 <= len(value) <= MAX_PAYMENT_METHOD_TYPES
        or not all(isinstance(t, str) and _PM_TYPE_RE.match(t) for t in value)
    ):
        raise ValidationError(
            "payment_method_types must be a non-empty list of payment method types such as ['card']"
        )
    return list(value)


def _transfer_data(amount_minor: int, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not set(value) <= {"destination", "amount"}:
        raise ValidationError("transfer_data must be a mapping with destination (and amount)")
    destination = account("transfer_data['destination']", value.get("destination"))
    if destination is None:
        raise ValidationError("transfer_data['destination'] is required")
    out: dict[str, Any] = {"destination": destination}
    if "amount" in value:
        moved = value["amount"]
        if isinstance(moved, bool) or not isinstance(moved, int) or not 1 <= moved <= amount_minor:
            raise ValidationError("transfer_data['amount'] must be an integer from 1 to amount")
        out["amount"] = moved
    return out


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
_TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")
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
    """A provider's template name or id: 1-256 of letters, digits and ``_.:-`` (each email
    provider checks its own form: ``ProviderSpec.email_checks``)."""
    if not isinstance(value, str) or not _TEMPLATE_NAME_RE.match(value):
        raise ValidationError("template must be 1-256 letters, digits, '_', '.', ':' or '-'")
    return value


def sendgrid_template_id(value: str) -> str:
    if not _TEMPLATE_ID_RE.match(value):
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
    if "\\u0000" in encoded:
        raise ValidationError("template_data must not contain NUL characters")
    if len(encoded.encode()) > MAX_TEMPLATE_DATA_BYTES:
        raise ValidationError(f"template_data must be at most {MAX_TEMPLATE_DATA_BYTES} bytes")
    clean: dict[str, Any] = json.loads(encoded)
    return clean
