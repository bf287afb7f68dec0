"""The provider request pipeline: outage, auth, idempotency, latency and faults around
the Stripe and SendGrid endpoints, in the order the fault model describes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator.common import (
    Response,
    bearer_token,
    mask_key,
    parse_form,
    provider_error,
    rate_limited,
    sendgrid_error,
    stripe_error,
)
from orchestrator.dev.simulator.faults import NO_FAULTS, Draw, FaultConfig
from orchestrator.dev.simulator.idempotency import NO_KEY, Reservation, release, reserve
from orchestrator.dev.simulator.sendgrid import send_mail
from orchestrator.dev.simulator.state import IdempotencyKey, Saved, State
from orchestrator.dev.simulator.stripe import StripeAPI

REQUEST_ID_CHARS = 14
_SENDGRID_UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
_ACCOUNT_RE = re.compile(r"^acct_[A-Za-z0-9]+$")


@dataclass
class Request:
    """A parsed provider request."""

    provider: str
    method: str
    path: str
    query: str
    body: bytes
    headers: Mapping[str, str]  # lower-cased names

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key") or None

    @property
    def account(self) -> str | None:
        """The Connect account (``Stripe-Account``) a Stripe request acts for; None: platform."""
        if self.provider != "stripe":
            return None
        return self.headers.get("stripe-account") or None

    def scoped_key(self, api_key: str) -> IdempotencyKey | None:
        """The idempotency key as Stripe scopes it: per API key and account."""
        key = self.idempotency_key
        return None if key is None else (api_key, self.account or "", key)


class Pipeline:
    """Auth, faults and idempotency around the provider endpoints."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.stripe = StripeAPI(state)

    def handle(self, req: Request) -> Response | None:
        """Answer a provider request; None means "cut the connection"."""
        log: dict[str, Any] = {
            "provider": req.provider,
            "method": req.method,
            "path": req.path,
            "idempotency_key": req.idempotency_key,
            "account": req.account,
            "status": None,
            "fault": None,
            "replayed": False,
        }
        resp = self._handle(req, log)
        if resp is not None and req.provider == "stripe":
            resp.headers.setdefault("Request-Id", self.state.new_id("req_", REQUEST_ID_CHARS))
            version = req.headers.get("stripe-version")
            if version:
                resp.headers["Stripe-Version"] = version
        return resp

    def _handle(self, req: Request, log: dict[str, Any]) -> Response | None:
        config = self.state.faults_for(req.provider)
        if config.outage:
            log["fault"] = "outage"
            return self._finish(
                log, provider_error(req.provider, 503, "The service is temporarily unavailable.")
            )
        api_key = bearer_token(req.headers.get("authorization"))
        if not self._authorized(req.provider, api_key):
            return self._finish(log, self._unauthorized(req.provider, api_key))
        assert api_key is not None
        if req.account is not None and not _ACCOUNT_RE.match(req.account):
            return self._finish(log, _no_account_access(api_key, req.account))
        params = self._params(req)
        reservation = self._reserve(req, api_key, params)
        seen = self.state.mark_seen(req.provider, req.scoped_key(api_key))
        self._sleep(config.latency_ms / 1000.0)
        if reservation.rejection is not None:
            release(self.state, reservation, None)
            return self._finish(log, reservation.rejection)
        draw = NO_FAULTS if (config.first_try_only and seen) else self.state.draw(config)
        try:
            return self._with_faults(req, params, reservation, draw, config, log)
        finally:
            release(self.state, reservation, None)

    def _with_faults(
        self,
        req: Request,
        params: dict[str, Any],
        reservation: Reservation,
        draw: Draw,
        config: FaultConfig,
        log: dict[str, Any],
    ) -> Response | None:
        if draw.rate_429:
            log["fault"] = "rate_429"
            return self._finish(log, rate_limited(req.provider))
        if draw.cut_before_execute:
            log["fault"] = "rate_cut_before_execute"
            return self._finish(log, None)
        if draw.rate_500:
            log["fault"] = "rate_500"
            return self._finish(log, self._save(reservation, self._server_error(req.provider)))
        resp = self._execute_or_replay(req, params, reservation, log)
        if draw.rate_500_after_execute:
            log["fault"] = "rate_500_after_execute"
            return self._finish(log, self._save(reservation, self._server_error(req.provider)))
        self._save(reservation, resp)
        if draw.cut_after_execute:
            log["fault"] = "rate_cut_after_execute"
            return self._finish(log, None)
        if draw.timeout:
            log["fault"] = "rate_timeout"
            self._finish(log, resp)
            self._sleep(config.timeout_sleep_s)
            return resp
        return self._finish(log, resp)

    def _execute_or_replay(
        self, req: Request, params: dict[str, Any], reservation: Reservation, log: dict[str, Any]
    ) -> Response:
        if reservation.replay is not None:
            log["replayed"] = True
            saved = reservation.replay
            headers = {k: v for k, v in saved.response.headers.items() if k != "Request-Id"}
            headers["Idempotent-Replayed"] = "true"
            headers["Original-Request"] = saved.request_id
            return dataclasses.replace(saved.response, headers=headers)
        if req.provider == "sendgrid":
            return send_mail(self.state, req.body)
        return self.stripe.route(
            req.method, req.path, params, req.account, req.headers.get("stripe-version")
        )

    def _save(self, reservation: Reservation, resp: Response) -> Response:
        """Save an executed response against the claimed key (if any); returns it."""
        if reservation.reserved and resp.saveable:
            resp.headers.setdefault("Request-Id", self.state.new_id("req_", REQUEST_ID_CHARS))
            saved = dataclasses.replace(resp, headers=dict(resp.headers))  # caller mutates resp
            release(self.state, reservation, Saved(saved, resp.headers["Request-Id"]))
        return resp

    def _finish(self, log: dict[str, Any], resp: Response | None) -> Response | None:
        log["status"] = None if resp is None else resp.status
        self.state.record(log)
        return resp

    def _reserve(self, req: Request, api_key: str, params: dict[str, Any]) -> Reservation:
        key = req.scoped_key(api_key)
        if req.provider != "stripe" or req.method != "POST" or key is None:
            return NO_KEY
        fingerprint = (req.method, req.path, _freeze(params))
        return reserve(self.state, key, fingerprint)

    def _params(self, req: Request) -> dict[str, Any]:
        if req.provider != "stripe":
            return {}
        raw = req.query if req.method in ("GET", "DELETE") else req.body.decode("utf-8", "replace")
        return parse_form(raw)

    def _authorized(self, provider: str, api_key: str | None) -> bool:
        if api_key is None:
            return False
        state = self.state
        expected = state.stripe_api_key if provider == "stripe" else state.sendgrid_api_key
        if expected is not None:
            return api_key == expected
        return api_key.startswith("sk_test_" if provider == "stripe" else "SG.")

    def _unauthorized(self, provider: str, api_key: str | None) -> Response:
        if provider == "sendgrid":
            return sendgrid_error(401, _SENDGRID_UNAUTHORIZED)
        if api_key is None:
            message = (
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY')."
            )
        else:
            message = f"Invalid API Key provided: {mask_key(api_key)}"
        return stripe_error(401, "invalid_request_error", message)

    @staticmethod
    def _server_error(provider: str) -> Response:
        resp = provider_error(provider, 500, "An unknown error occurred (simulated).")
        resp.saveable = True
        return resp

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.state.stop_event.wait(seconds)


def _no_account_access(api_key: str, account: str) -> Response:
    """Stripe's 403 for a ``Stripe-Account`` the key cannot act for (never saved)."""
    return stripe_error(
        403,
        "invalid_request_error",
        f"The provided key '{mask_key(api_key)}' does not have access to account "
        f"'{account}' (or that account does not exist). Application access may have been "
        "revoked.",
    )


def _freeze(value: object) -> object:
    """A hashable, order-independent form of parsed params for fingerprinting."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
