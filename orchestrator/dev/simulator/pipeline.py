"""The provider request pipeline: outage, auth, idempotency, latency and faults around
the Stripe, SendGrid and Razorpay endpoints, in the order the fault model describes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator import razorpay_common as rz
from orchestrator.dev.simulator.common import (
    Response,
    bearer_token,
    html_gateway_error,
    mask_key,
    parse_form,
    provider_error,
    rate_limited,
    sendgrid_error,
    stripe_error,
)
from orchestrator.dev.simulator.faults import NO_FAULTS, Draw, FaultConfig
from orchestrator.dev.simulator.idempotency import NO_KEY, Reservation, release, reserve
from orchestrator.dev.simulator.razorpay import RazorpayAPI, is_refund_create
from orchestrator.dev.simulator.sendgrid import send_mail
from orchestrator.dev.simulator.state import IdempotencyKey, Saved, State
from orchestrator.dev.simulator.stripe import StripeAPI

REQUEST_ID_CHARS = 14
_SENDGRID_UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
_ACCOUNT_RE = re.compile(r"^acct_[A-Za-z0-9]+$")
RAZORPAY_IDEMPOTENCY_HEADER = "x-refund-idempotency"


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
        """Stripe's ``Idempotency-Key``, or Razorpay's ``X-Refund-Idempotency``."""
        if self.provider == "razorpay":
            return self.headers.get(RAZORPAY_IDEMPOTENCY_HEADER) or None
        return self.headers.get("idempotency-key") or None

    @property
    def account(self) -> str | None:
        """The Connect account (``Stripe-Account``) a Stripe request acts for; None: platform."""
        if self.provider != "stripe":
            return None
        return self.headers.get("stripe-account") or None

    def scoped_key(self, api_key: str) -> IdempotencyKey | None:
        """The idempotency key as scoped: per API key and Stripe account (Razorpay: per key
        id, kept apart from Stripe's keys by the header name)."""
        key = self.idempotency_key
        if key is None:
            return None
        scope = RAZORPAY_IDEMPOTENCY_HEADER if self.provider == "razorpay" else self.account
        return (api_key, scope or "", key)


class Pipeline:
    """Auth, faults and idempotency around the provider endpoints."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.stripe = StripeAPI(state)
        self.razorpay = RazorpayAPI(state)

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
            return self._finish(log, _outage(req.provider))
        api_key = self._authenticate(req)
        if api_key is None:
            return self._finish(log, self._unauthorized(req))
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
            limited = (
                rz.rate_limited() if req.provider == "razorpay" else rate_limited(req.provider)
            )
            return self._finish(log, limited)
        if draw.cut_before_execute:
            log["fault"] = "rate_cut_before_execute"
            return self._finish(log, None)
        if draw.rate_500:
            log["fault"] = "rate_500"
            return self._finish(log, self._save(reservation, self._server_error(req.provider)))
        if draw.html_502:
            log["fault"] = "rate_html_502"
            return self._finish(log, html_gateway_error(502))
        resp = self._execute_or_replay(req, params, reservation, log)
        if draw.rate_500_after_execute:
            log["fault"] = "rate_500_after_execute"
            error = self._server_error(req.provider)
            # Stripe saves the 500 against the key; Razorpay keeps the refund it made, so a
            # retry with the same X-Refund-Idempotency key gets that refund.
            self._save(reservation, resp if req.provider == "razorpay" else error)
            return self._finish(log, error)
        self._save(reservation, resp)
        if draw.html_504_after_execute:
            log["fault"] = "rate_html_504_after_execute"
            return self._finish(log, html_gateway_error(504))
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
            if req.provider == "stripe":
                headers["Idempotent-Replayed"] = "true"
                headers["Original-Request"] = saved.request_id
            return dataclasses.replace(saved.response, headers=headers)
        if req.provider == "sendgrid":
            return send_mail(self.state, req.body)
        if req.provider == "razorpay":
            credentials = rz.basic_credentials(req.headers.get("authorization"))
            secret = credentials[1] if credentials else ""
            return self.razorpay.route(req.method, req.path, params, secret)
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
        fingerprint = (req.method, req.path, _freeze(params))
        if req.provider == "razorpay":
            if key is None or not is_refund_create(req.method, req.path):
                return NO_KEY
            malformed = rz.check_idempotency_key(key[2])
            if malformed is not None:
                return Reservation(None, rejection=malformed)
            return reserve(self.state, key, fingerprint, "razorpay")
        if req.provider != "stripe" or req.method != "POST" or key is None:
            return NO_KEY
        return reserve(self.state, key, fingerprint)

    def _params(self, req: Request) -> dict[str, Any]:
        if req.provider == "razorpay":
            return rz.parse_params(req.method, req.query, req.body)
        if req.provider != "stripe":
            return {}
        raw = req.query if req.method in ("GET", "DELETE") else req.body.decode("utf-8", "replace")
        return parse_form(raw)

    def _authenticate(self, req: Request) -> str | None:
        """The request's API key (Razorpay: key id) when its credentials are right."""
        state, header = self.state, req.headers.get("authorization")
        if req.provider == "razorpay":
            return rz.authorized_key_id(header, state.razorpay_key_id, state.razorpay_key_secret)
        api_key = bearer_token(header)
        if api_key is None:
            return None
        expected = state.stripe_api_key if req.provider == "stripe" else state.sendgrid_api_key
        if expected is not None:
            return api_key if api_key == expected else None
        return (
            api_key
            if api_key.startswith("sk_test_" if req.provider == "stripe" else "SG.")
            else None
        )

    def _unauthorized(self, req: Request) -> Response:
        if req.provider == "razorpay":
            return rz.unauthorized()
        if req.provider == "sendgrid":
            return sendgrid_error(401, _SENDGRID_UNAUTHORIZED)
        api_key = bearer_token(req.headers.get("authorization"))
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
        """A 500 from the API; Stripe saves it against the key, Razorpay does not."""
        if provider == "razorpay":
            return rz.server_error()
        resp = provider_error(provider, 500, "An unknown error occurred (simulated).")
        resp.saveable = True
        return resp

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.state.stop_event.wait(seconds)


def _outage(provider: str) -> Response:
    if provider == "razorpay":
        return rz.server_error(503)
    return provider_error(provider, 503, "The service is temporarily unavailable.")


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
