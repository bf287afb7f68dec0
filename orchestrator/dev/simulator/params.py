"""Stripe request parameters: typed parsing with Stripe's validation errors, and list
pagination (``limit``, ``starting_after`` / ``ending_before``, ``created[...]`` filters)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator.common import Response, StripeError, json_response

MIN_AMOUNT_MINOR_UNITS = 1
MAX_AMOUNT_MINOR_UNITS = 99_999_999
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 40
MAX_METADATA_VALUE_CHARS = 500
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_INTEGER_RE = re.compile(r"^-?\d+$")
_CREATED_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda created, bound: created > bound,
    "gte": lambda created, bound: created >= bound,
    "lt": lambda created, bound: created < bound,
    "lte": lambda created, bound: created <= bound,
}


@dataclass(frozen=True)
class Call:
    """One Stripe API call: path segments, parsed params and the ``Stripe-Account`` scope."""

    parts: list[str]
    params: dict[str, Any]
    account: str | None = None
    api_version: str | None = None  # the Stripe-Version header


def param_str(params: Mapping[str, Any], name: str, label: str | None = None) -> str | None:
    """A string param; ``label`` is its full name in errors (``a[b]`` for nested ones)."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {label or name}", param=label or name)
    return value


def param_bool(params: Mapping[str, Any], name: str, label: str | None = None) -> bool | None:
    raw = param_str(params, name, label)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise StripeError(400, f"Invalid boolean: {raw}", param=label or name)
    return raw == "true"


def param_dict(params: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StripeError(400, f"Invalid object: {name}", param=name)
    return value


def param_int(raw: str | None, name: str, *, minimum: int = 0) -> int | None:
    if raw is None:
        return None
    if not _INTEGER_RE.match(raw):
        raise StripeError(400, f"Invalid integer: {raw}", param=name)
    value = int(raw)
    if value < minimum:
        raise StripeError(
            400, f"This value must be greater than or equal to {minimum}.", param=name
        )
    return value


def parse_amount(raw: str | None, name: str = "amount") -> int | None:
    amount = param_int(raw, name, minimum=MIN_AMOUNT_MINOR_UNITS)
    if amount is not None and amount > MAX_AMOUNT_MINOR_UNITS:
        raise StripeError(
            400, "Amount must be no more than 99999999.", code="amount_too_large", param=name
        )
    return amount


def require(value: object, name: str) -> None:
    if value is None or value == "":
        raise StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )


def one_of(raw: str | None, name: str, allowed: Sequence[str]) -> str | None:
    if raw is not None and raw not in allowed:
        raise StripeError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", param=name)
    return raw


def parse_metadata(params: Mapping[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise StripeError(400, "Invalid object", param="metadata")
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise StripeError(400, "Invalid metadata value", param=f"metadata[{key}]")
        if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
            raise StripeError(400, "Metadata key or value too long", param=f"metadata[{key}]")
        if value != "":
            metadata[key] = value
    if len(metadata) > MAX_METADATA_KEYS:
        raise StripeError(400, "Too many metadata keys", param="metadata")
    return metadata


def parse_currency(raw: str | None) -> str:
    require(raw, "currency")
    currency = (raw or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise StripeError(
            400, f"Invalid currency: {raw}.", code="invalid_currency", param="currency"
        )
    return currency


def parse_limit(params: Mapping[str, Any]) -> int:
    raw = param_str(params, "limit")
    if raw is None:
        return DEFAULT_LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    return int(raw)


def parse_page(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit():
        raise StripeError(400, f"Invalid page: {raw}", param="page")
    return int(raw)


def created_filter(params: Mapping[str, Any]) -> Callable[[int], bool]:
    """``created=<t>`` or ``created[gt|gte|lt|lte]=<t>`` (unix seconds) as a predicate."""
    raw = params.get("created")
    if raw is None:
        return lambda _created: True
    if isinstance(raw, str):
        exact = param_int(raw, "created")
        return lambda created: created == exact
    if not isinstance(raw, dict):
        raise StripeError(400, "Invalid created: must be an integer or an object", param="created")
    bounds: list[tuple[Callable[[int, int], bool], int]] = []
    for op, value in raw.items():
        name = f"created[{op}]"
        if op not in _CREATED_OPERATORS:
            raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        bound = param_int(value if isinstance(value, str) else None, name)
        if bound is None:
            raise StripeError(400, f"Invalid integer: {value}", param=name)
        bounds.append((_CREATED_OPERATORS[op], bound))
    return lambda created: all(test(created, bound) for test, bound in bounds)


def filtered_page(
    newest_first: Sequence[dict[str, Any]], params: Mapping[str, Any], url: str, field: str
) -> Response:
    """:func:`list_page` over the objects whose ``field`` is the ``field`` parameter (when
    given) and whose ``created`` passes the ``created[...]`` filters."""
    wanted = param_str(params, field)
    created_ok = created_filter(params)

    def matches(obj: dict[str, Any]) -> bool:
        return (wanted is None or obj[field] == wanted) and created_ok(obj["created"])

    return list_page(newest_first, matches, params, url)


def list_page(
    newest_first: Sequence[dict[str, Any]],
    matches: Callable[[dict[str, Any]], bool],
    params: Mapping[str, Any],
    url: str,
) -> Response:
    """A Stripe list page over ``newest_first`` (the caller's account-scoped objects).

    Cursors are positions in ``newest_first`` (the cursor object itself need not match
    the filters); ``ending_before`` answers the ``limit`` matches just newer than it,
    still newest first, with ``has_more`` telling whether even newer ones exist.
    """
    limit = parse_limit(params)
    after = param_str(params, "starting_after")
    before = param_str(params, "ending_before")
    if after and before:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    if before:
        end = _cursor_index(newest_first, before, "ending_before")
        candidates = [obj for obj in newest_first[:end] if matches(obj)]
        page = candidates[-limit:]
        has_more = len(candidates) > limit
    else:
        start = _cursor_index(newest_first, after, "starting_after") + 1 if after else 0
        candidates = [obj for obj in newest_first[start:] if matches(obj)]
        page = candidates[:limit]
        has_more = len(candidates) > limit
    return json_response(200, {"object": "list", "data": page, "has_more": has_more, "url": url})


def _cursor_index(items: Sequence[dict[str, Any]], cursor: str, name: str) -> int:
    for index, item in enumerate(items):
        if item["id"] == cursor:
            return index
    kind = str(items[0]["object"]) if items else "object"
    raise StripeError(400, f"No such {kind}: '{cursor}'", code="resource_missing", param=name)
