"""Idempotency keys: claiming a key, replaying its saved response, 409 / 400 answers.

Stripe's ``Idempotency-Key`` and Razorpay's ``X-Refund-Idempotency`` share the mechanism and
differ in their error bodies. Keys are scoped per (API key, ``Stripe-Account`` or header
name) and forgotten
:data:`~orchestrator.dev.simulator.state.IDEMPOTENCY_KEY_TTL_S` (24 h, simulated clock)
after their first use: the same key then executes again, like a fresh one.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.dev.simulator.common import Response, StripeError, stripe_error
from orchestrator.dev.simulator.razorpay_common import (
    idempotency_key_in_use,
    idempotency_key_mismatch,
)
from orchestrator.dev.simulator.state import (
    IDEMPOTENCY_KEY_TTL_S,
    IdempotencyEntry,
    IdempotencyKey,
    Saved,
    State,
)


@dataclass(frozen=True)
class Reservation:
    """Outcome of the idempotency check for one request."""

    key: IdempotencyKey | None
    reserved: bool = False
    replay: Saved | None = None
    rejection: Response | None = None


NO_KEY = Reservation(None)


def reserve(
    state: State, key: IdempotencyKey, fingerprint: tuple[object, ...], provider: str = "stripe"
) -> Reservation:
    """Claim an idempotency key, or decide on replay / 409 / 400 for it."""
    razorpay = provider == "razorpay"
    with state.lock:
        now = state.mono()
        entry = state.idempotency.get(key)
        if entry is None or _forgotten(entry, now):
            state.idempotency[key] = IdempotencyEntry(fingerprint, now)
            return Reservation(key, reserved=True)
        if entry.in_flight:
            in_use = idempotency_key_in_use() if razorpay else _key_in_use(key[2])
            return Reservation(key, rejection=in_use)
        if entry.fingerprint != fingerprint:
            mismatch = idempotency_key_mismatch() if razorpay else _key_mismatch(key[2])
            return Reservation(key, rejection=mismatch)
        return Reservation(key, replay=entry.saved)


def release(state: State, reservation: Reservation, saved: Saved | None) -> None:
    """Finish a claimed key, saving the response if there is one."""
    if not reservation.reserved or reservation.key is None:
        return
    with state.lock:
        entry = state.idempotency.get(reservation.key)
        if entry is None:  # reset() while in flight
            return
        entry.in_flight = False
        if saved is not None:
            entry.saved = saved


def _forgotten(entry: IdempotencyEntry, now_mono: float) -> bool:
    """Nothing saved (and nothing executing), or older than the key lifetime."""
    if entry.in_flight:
        return False
    return entry.saved is None or now_mono - entry.first_used_mono >= IDEMPOTENCY_KEY_TTL_S


def _key_in_use(key: str) -> Response:
    resp = StripeError(
        409,
        "There is currently another in-progress request using this idempotent key "
        "(that probably means you submitted twice, and the other request is still "
        f"going through): {key}. Please try again later.",
        code="idempotency_key_in_use",
    ).response()
    resp.headers["Stripe-Should-Retry"] = "true"
    return resp


def _key_mismatch(key: str) -> Response:
    return stripe_error(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they "
        f"were first used with. Try using a key other than '{key}' if you meant to "
        "execute a different request.",
    )
