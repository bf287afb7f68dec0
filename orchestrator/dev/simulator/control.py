"""The control plane (``/_sim/...``, JSON, no auth): its endpoints and
:class:`SimulatorControl`, the client for a simulator in another process."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.dev.simulator.common import Response, json_response
from orchestrator.dev.simulator.payments import snapshot_payment_intents
from orchestrator.dev.simulator.razorpay_payments import snapshot as razorpay_snapshot
from orchestrator.dev.simulator.state import State

if TYPE_CHECKING:
    import requests


def control(state: State, method: str, path: str, body: bytes) -> Response:
    name = path[len("/_sim/") :].strip("/")
    if name.startswith("razorpay/"):
        return _control_razorpay(state, method, name[len("razorpay/") :], body)
    if method == "GET":
        return _control_get(state, name)
    if method == "POST" and name == "reset":
        state.reset()
        return json_response(200, {"ok": True})
    if method == "POST" and name == "faults":
        return _control_set_faults(state, body)
    if method == "POST" and name == "webhooks":
        return _control_set_webhook(state, body)
    if method == "POST" and name == "clock":
        return _control_advance_clock(state, body)
    return json_response(404, {"error": f"unknown control endpoint: {method} {path}"})


def _control_get(state: State, name: str) -> Response:
    if name == "health":
        return json_response(200, {"ok": True})
    if name == "payment_intents":
        return json_response(200, snapshot_payment_intents(state))
    if name in ("refunds", "mail", "requests", "webhooks"):
        return json_response(200, state.snapshot(name))
    if name == "clock":
        return json_response(200, _clock(state))
    if name == "faults":
        with state.lock:
            faults = {p: dataclasses.asdict(c) for p, c in state.faults.items()}
        return json_response(200, faults)
    return json_response(404, {"error": f"unknown control endpoint: GET /_sim/{name}"})


def _control_set_faults(state: State, body: bytes) -> Response:
    try:
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
        provider = payload.pop("provider", "all")
        state.set_faults(str(provider), payload)
    except ValueError as exc:
        return json_response(400, {"error": str(exc)})
    return json_response(200, {"ok": True})


def _clock(state: State) -> dict[str, float]:
    return {"offset_s": state.clock_offset_s, "now": state.now()}


def _control_advance_clock(state: State, body: bytes) -> Response:
    """``{"advance_s": N}``: move the simulated clock N seconds forward."""
    try:
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict) or "advance_s" not in payload:
            raise ValueError('body must be a JSON object like {"advance_s": 60}')
        state.advance_clock(payload["advance_s"])
    except ValueError as exc:
        return json_response(400, {"error": str(exc)})
    return json_response(200, {"ok": True, **_clock(state)})


def _control_set_webhook(state: State, body: bytes) -> Response:
    try:
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
        url, secret = payload.get("url"), payload.get("secret")
        if not isinstance(url, (str, type(None))) or not isinstance(secret, (str, type(None))):
            raise ValueError("url and secret must be strings or null")
        state.set_webhook(url, secret)
    except ValueError as exc:
        return json_response(400, {"error": str(exc)})
    return json_response(200, {"ok": True})


def _control_razorpay(state: State, method: str, name: str, body: bytes) -> Response:
    """``/_sim/razorpay/...``: inspect orders / payments / refunds, read or change the
    receipt mode, set the webhook target."""
    if method == "GET" and name in ("orders", "payments", "refunds"):
        return json_response(200, razorpay_snapshot(state, name))
    if method == "GET" and name == "settings":
        return json_response(200, _razorpay_settings(state))
    if method == "POST" and name in ("settings", "webhooks"):
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            if name == "settings":
                state.set_receipt_mode(str(payload.get("receipt_mode")))
            else:
                url, secret = payload.get("url"), payload.get("secret")
                if not isinstance(url, (str, type(None))) or not isinstance(
                    secret, (str, type(None))
                ):
                    raise ValueError("url and secret must be strings or null")
                state.set_razorpay_webhook(url, secret)
        except ValueError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, {"ok": True, **_razorpay_settings(state)})
    return json_response(
        404, {"error": f"unknown control endpoint: {method} /_sim/razorpay/{name}"}
    )


def _razorpay_settings(state: State) -> dict[str, object]:
    with state.lock:
        return {
            "receipt_mode": state.razorpay_receipt_mode,
            "webhook_url": state.razorpay_webhook_url,
        }


class SimulatorControl:
    """Drive a simulator running in another process through its /_sim endpoints."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import requests as requests_lib

        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._session: requests.Session = requests_lib.Session()

    def health(self) -> bool:
        try:
            resp = self._session.get(f"{self._url}/_sim/health", timeout=self._timeout_s)
        except OSError:
            return False
        return resp.status_code == 200

    def set_faults(self, provider: str = "all", **faults: float | bool) -> None:
        self._post("faults", {"provider": provider, **faults})

    def reset(self) -> None:
        self._post("reset", {})

    def advance_clock(self, seconds: float) -> None:
        """Move the simulated clock forward (``created``, search lag, key expiry, settling)."""
        self._post("clock", {"advance_s": seconds})

    def payment_intents(self) -> list[dict[str, Any]]:
        return self._get("payment_intents")

    def refunds(self) -> list[dict[str, Any]]:
        return self._get("refunds")

    def mail(self) -> list[dict[str, Any]]:
        return self._get("mail")

    def requests_log(self) -> list[dict[str, Any]]:
        return self._get("requests")

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        self._post("webhooks", {"url": url, "secret": secret})

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return self._get("webhooks")

    def set_razorpay_webhook(self, url: str | None, secret: str | None = None) -> None:
        self._post("razorpay/webhooks", {"url": url, "secret": secret})

    def set_receipt_mode(self, mode: str) -> None:
        """``"reject"`` or ``"return_existing"`` for a reused Razorpay order receipt."""
        self._post("razorpay/settings", {"receipt_mode": mode})

    def razorpay_orders(self) -> list[dict[str, Any]]:
        return self._get("razorpay/orders")

    def razorpay_payments(self) -> list[dict[str, Any]]:
        return self._get("razorpay/payments")

    def razorpay_refunds(self) -> list[dict[str, Any]]:
        return self._get("razorpay/refunds")

    def close(self) -> None:
        self._session.close()

    def _post(self, name: str, payload: Mapping[str, object]) -> None:
        resp = self._session.post(f"{self._url}/_sim/{name}", json=payload, timeout=self._timeout_s)
        if resp.status_code == 400:
            raise ValueError(resp.json().get("error", resp.text))
        resp.raise_for_status()

    def _get(self, name: str) -> list[dict[str, Any]]:
        resp = self._session.get(f"{self._url}/_sim/{name}", timeout=self._timeout_s)
        resp.raise_for_status()
        data: list[dict[str, Any]] = resp.json()
        return data
