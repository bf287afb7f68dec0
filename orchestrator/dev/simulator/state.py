"""All simulator state (objects, logs, saved keys, queued events, faults, RNGs) and its records."""

from __future__ import annotations

import copy
import math
import random
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator.common import Response
from orchestrator.dev.simulator.faults import NO_FAULTS, Draw, FaultConfig

PROVIDERS: tuple[str, ...] = ("stripe", "sendgrid", "razorpay")
STRIPE_ID_CHARS = 24
RECEIPT_MODES: tuple[str, ...] = ("reject", "return_existing")
_ALNUM = string.ascii_letters + string.digits
_BYTE_TO_ALNUM = "".join(_ALNUM[i % len(_ALNUM)] for i in range(256)).encode("ascii")
# Stripe keeps an idempotency key at least 24 hours; the simulator forgets it after exactly that.
IDEMPOTENCY_KEY_TTL_S = 24 * 60 * 60
IdempotencyKey = tuple[str, str, str]  # (api key, Stripe-Account or "", Idempotency-Key)


@dataclass
class PaymentIntentRecord:
    """An intent, the Connect account it lives in (None: the platform) and its timers.

    ``*_mono`` times are on the simulated monotonic clock (:meth:`State.mono`).
    """

    obj: dict[str, Any]
    created_mono: float
    account: str | None = None
    settle_at_mono: float | None = None
    settle_fails: bool = False


@dataclass
class RazorpayOrderRecord:
    """A Razorpay order and what its creation request asked for beyond the entity."""

    obj: dict[str, Any]
    auto_capture: bool = True


@dataclass
class RazorpayPaymentRecord:
    """A Razorpay payment and its timer (``settle_at_mono`` on the simulated clock)."""

    obj: dict[str, Any]
    settle_at_mono: float | None = None
    settle_fails: bool = False


@dataclass
class RazorpayRefundRecord:
    """A Razorpay refund and when it moves from ``pending`` to ``processed`` (simulated)."""

    obj: dict[str, Any]
    process_at_mono: float | None = None


@dataclass
class Saved:
    response: Response
    request_id: str


@dataclass
class IdempotencyEntry:
    fingerprint: tuple[object, ...]
    first_used_mono: float  # simulated clock
    in_flight: bool = True
    saved: Saved | None = None


@dataclass
class WebhookDelivery:
    """One event waiting for delivery (a duplicate is a second delivery of the same event)."""

    event: dict[str, Any]
    due_mono: float
    provider: str = "stripe"
    event_id: str | None = None  # Razorpay: sent as x-razorpay-event-id (Stripe: in the body)


class State:
    """All simulator state, guarded by one lock."""

    def __init__(
        self,
        stripe_api_key: str | None,
        sendgrid_api_key: str | None,
        seed: int | None,
        *,
        razorpay_key_id: str | None = None,
        razorpay_key_secret: str | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stripe_api_key = stripe_api_key
        self.sendgrid_api_key = sendgrid_api_key
        self.razorpay_key_id = razorpay_key_id
        self.razorpay_key_secret = razorpay_key_secret
        self.razorpay_receipt_mode = "reject"
        self.seed = seed
        self.id_rng = random.Random()
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.razorpay_webhook_url: str | None = None
        self.razorpay_webhook_secret: str | None = None
        self.webhook_wakeup = threading.Condition(self.lock)
        self._init_data()

    def _init_data(self) -> None:
        self.fault_rng = random.Random(self.seed)
        self.faults: dict[str, FaultConfig] = {p: FaultConfig() for p in PROVIDERS}
        self.payment_intents: dict[str, PaymentIntentRecord] = {}
        self.metadata_index: dict[tuple[str, str], list[str]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.refund_accounts: dict[str, str | None] = {}  # refund id -> Connect account
        self.refunds_by_pi: dict[str, list[str]] = {}
        self.mail: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.idempotency: dict[IdempotencyKey, IdempotencyEntry] = {}
        self.seen_keys: set[tuple[str, IdempotencyKey]] = set()
        self.clock_offset_s = 0.0
        self.settling: set[str] = set()  # processing intents waiting for their timer
        self.webhook_queue: list[WebhookDelivery] = []
        self.webhook_log: list[dict[str, Any]] = []
        self.rz_orders: dict[str, RazorpayOrderRecord] = {}
        self.rz_receipts: dict[str, str] = {}  # receipt -> order id
        self.rz_payments: dict[str, RazorpayPaymentRecord] = {}
        self.rz_payments_by_order: dict[str, list[str]] = {}
        self.rz_refunds: dict[str, RazorpayRefundRecord] = {}
        self.rz_refunds_by_payment: dict[str, list[str]] = {}
        # Razorpay objects waiting for a timer: pending debits, authorized (uncaptured)
        # payments and pending refunds.
        self.rz_pending_payments: set[str] = set()
        self.rz_authorized: set[str] = set()
        self.rz_pending_refunds: set[str] = set()

    def reset(self) -> None:
        with self.lock:
            self._init_data()

    # -- the simulated clock: real time plus an offset tests advance -------------

    def now(self) -> float:
        """Simulated wall-clock time (unix seconds): ``created`` timestamps."""
        return time.time() + self.clock_offset_s

    def mono(self) -> float:
        """Simulated monotonic time: search lag, settling and idempotency-key expiry."""
        return time.monotonic() + self.clock_offset_s

    def advance_clock(self, seconds: float) -> float:
        """Move the simulated clock forward; returns the new offset."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError("advance_s must be a number")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance_s must be a finite number >= 0: {seconds}")
        with self.lock:
            self.clock_offset_s += float(seconds)
            return self.clock_offset_s

    def new_id(self, prefix: str, length: int = STRIPE_ID_CHARS) -> str:
        return prefix + self.id_rng.randbytes(length).translate(_BYTE_TO_ALNUM).decode()

    def set_faults(self, provider: str, fields: Mapping[str, object]) -> None:
        if provider not in (*PROVIDERS, "all"):
            raise ValueError(f"unknown provider: {provider!r}")
        config = FaultConfig.from_fields(fields)
        with self.lock:
            for name in PROVIDERS if provider == "all" else (provider,):
                self.faults[name] = config

    def faults_for(self, provider: str) -> FaultConfig:
        with self.lock:
            return self.faults[provider]

    def draw(self, config: FaultConfig) -> Draw:
        rates, gateway = config.rates(), config.gateway_rates()
        if not any(rates) and not any(gateway):
            return NO_FAULTS
        with self.lock:
            fired = [self.fault_rng.random() < rate for rate in rates]
            fired += [rate > 0 and self.fault_rng.random() < rate for rate in gateway]
        return Draw(*fired)

    def mark_seen(self, provider: str, key: IdempotencyKey | None) -> bool:
        """Record a key; True if it was seen before (keyless requests are never seen)."""
        if key is None:
            return False
        entry = (provider, key)
        with self.lock:
            seen = entry in self.seen_keys
            self.seen_keys.add(entry)
        return seen

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.log.append(entry)

    def record_webhook(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.webhook_log.append(entry)

    def set_webhook(self, url: str | None, secret: str | None) -> None:
        _check_webhook_url(url)
        with self.lock:
            self.webhook_url = url
            self.webhook_secret = secret

    def set_razorpay_webhook(self, url: str | None, secret: str | None) -> None:
        _check_webhook_url(url)
        with self.lock:
            self.razorpay_webhook_url = url
            self.razorpay_webhook_secret = secret

    def set_receipt_mode(self, mode: str) -> None:
        """How Razorpay order create treats a receipt already used (see the package docs)."""
        if mode not in RECEIPT_MODES:
            raise ValueError(f"receipt_mode must be one of {', '.join(RECEIPT_MODES)}: {mode!r}")
        with self.lock:
            self.razorpay_receipt_mode = mode

    # -- snapshots (lock held by caller-facing wrappers) --------------------------

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            source: list[dict[str, Any]]
            if name == "refunds":
                source = list(self.refunds.values())
            elif name == "mail":
                source = self.mail
            elif name == "webhooks":
                source = self.webhook_log
            else:
                source = self.log
            return copy.deepcopy(source)


def _check_webhook_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError("webhook url must be an http(s):// URL")
