"""Webhook delivery: a background thread settles timers (Stripe ``processing`` intents,
Razorpay pending debits and refunds) on time and POSTs queued events to each provider's
target, signed as that provider signs them, retrying a few times."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request

from orchestrator.dev.simulator.common import JSON_CONTENT_TYPE
from orchestrator.dev.simulator.payments import settle
from orchestrator.dev.simulator.razorpay_payments import settle_due as settle_razorpay
from orchestrator.dev.simulator.state import State, WebhookDelivery

# Webhook delivery: Stripe retries for days; a few quick tries is enough for tests and demos.
WEBHOOK_MAX_ATTEMPTS = 3
WEBHOOK_RETRY_BASE_S = 0.2
WEBHOOK_TIMEOUT_S = 5.0
# How often the webhook thread wakes to settle processing intents and send due events.
WEBHOOK_TICK_S = 0.02


def sign_webhook(payload: bytes, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` header value for ``payload``, as Stripe computes it."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def sign_razorpay_webhook(payload: bytes, secret: str) -> str:
    """An ``X-Razorpay-Signature`` header value: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


class WebhookSender:
    """Background thread: settles processing intents on time and delivers queued events."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.thread = threading.Thread(
            target=self._loop, name="orchestrator-simulator-webhooks", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        with self.state.webhook_wakeup:
            self.state.webhook_wakeup.notify()
        self.thread.join()

    def _loop(self) -> None:
        state = self.state
        while not state.stop_event.is_set():
            with state.webhook_wakeup:
                state.webhook_wakeup.wait(WEBHOOK_TICK_S)
                batch = self._take_due()
                targets = {
                    "stripe": (state.webhook_url, state.webhook_secret),
                    "razorpay": (state.razorpay_webhook_url, state.razorpay_webhook_secret),
                }
            for delivery in batch:
                if state.stop_event.is_set():
                    return
                self._deliver(delivery, *targets[delivery.provider])

    def _take_due(self) -> list[WebhookDelivery]:
        """Settle due intents, then pop the deliveries to send now (lock held)."""
        state = self.state
        simulated_now = state.mono()  # settling follows the simulated clock
        for pi_id in list(state.settling):
            record = state.payment_intents.get(pi_id)
            if record is None:
                state.settling.discard(pi_id)
            else:
                settle(state, record, simulated_now)
        settle_razorpay(state)
        now = time.monotonic()  # delivery delays are real time
        queue = state.webhook_queue
        if not queue or queue[0].due_mono > now:
            return []
        if any(state.faults[p].webhook_reorder for p in ("stripe", "razorpay")):
            batch = list(reversed(queue))
            queue.clear()
            return batch
        batch = [d for d in queue if d.due_mono <= now]
        state.webhook_queue = [d for d in queue if d.due_mono > now]
        return batch

    def _deliver(self, delivery: WebhookDelivery, url: str | None, secret: str | None) -> None:
        if url is None:
            return
        event = delivery.event
        body = json.dumps(event, separators=(",", ":")).encode()
        status: int | None = None
        attempt = 0
        for attempt in range(1, WEBHOOK_MAX_ATTEMPTS + 1):
            status = self._post(url, body, self._headers(delivery, body, secret))
            if status is not None and 200 <= status < 300:
                break
            if self.state.stop_event.wait(WEBHOOK_RETRY_BASE_S * 2 ** (attempt - 1)):
                break
        if delivery.provider == "razorpay":
            entry = {"event_id": delivery.event_id, "type": event["event"]}
        else:
            entry = {"event_id": event["id"], "type": event["type"]}
        self.state.record_webhook(
            {"provider": delivery.provider, **entry, "status": status, "attempts": attempt}
        )

    @staticmethod
    def _headers(delivery: WebhookDelivery, body: bytes, secret: str | None) -> dict[str, str]:
        headers = {"Content-Type": JSON_CONTENT_TYPE}
        if delivery.provider == "razorpay":
            headers["User-Agent"] = "Razorpay-Webhook/v1 (simulator)"
            headers["X-Razorpay-Event-Id"] = delivery.event_id or ""
            if secret:
                headers["X-Razorpay-Signature"] = sign_razorpay_webhook(body, secret)
            return headers
        headers["User-Agent"] = "Stripe/1.0 (simulator)"
        if secret:
            headers["Stripe-Signature"] = sign_webhook(body, secret, int(time.time()))
        return headers

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return None
