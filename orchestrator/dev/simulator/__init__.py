"""In-process Stripe- and SendGrid-compatible HTTP API for tests, demos and benchmarks.

What is simulated
-----------------
* **Stripe** (``/v1/...``, form-encoded bodies exactly as the official ``stripe`` SDK
  sends them): PaymentIntents (create / retrieve / list / search / capture / cancel) and
  Refunds (create / retrieve / list), Bearer API-key authentication, the ``Request-Id``
  header and Stripe's idempotency semantics: the first *executed* response for an
  ``Idempotency-Key`` (2xx, 402 card errors, 5xx and business-rule 400s such as
  ``payment_intent_unexpected_state``) is saved per (API key, ``Stripe-Account``) and
  replayed with ``Idempotent-Replayed: true``; the same key with other parameters answers
  400 ``idempotency_error``; a key still executing answers 409 ``idempotency_key_in_use``.
  Auth failures, 429s, 409s, outages and parameter validation failures are never saved.
  Idempotency applies to POST requests only. A key is forgotten 24 h (simulated clock)
  after its first use (Stripe keeps keys *at least* 24 h): the same key and parameters
  then execute again and create a new object.
* **PaymentIntent create rules** (as documented for API versions since 2023-08-16, where
  automatic payment methods are on by default; an older ``Stripe-Version`` header turns
  that default off): with ``confirm=true``, automatic payment methods in effect
  (``automatic_payment_methods[enabled]=true``, or neither it nor ``payment_method_types``
  given), ``allow_redirects`` not ``never`` and no ``return_url`` -> 400 (param
  ``return_url``). Both ``automatic_payment_methods`` and ``payment_method_types``,
  ``return_url`` / ``off_session`` without ``confirm=true``, ``allow_redirects`` other than
  ``always`` / ``never``, a bad ``capture_method`` and ``application_fee_amount`` without a
  Connect context (``Stripe-Account``, ``transfer_data[destination]`` or ``on_behalf_of``)
  are 400s. Stored and returned as given: ``capture_method`` (default
  ``automatic_async``), ``customer``, ``description``, ``receipt_email``,
  ``statement_descriptor_suffix``, ``on_behalf_of``, ``transfer_data[destination]``,
  ``application_fee_amount``, ``off_session``, ``payment_method_types`` (``["card"]``, the
  simulated Dashboard's set, under automatic payment methods) and
  ``automatic_payment_methods``. Every intent has a ``client_secret``.
* **Test payment methods** drive the outcome: ``pm_card_visa`` / ``_mastercard`` /
  ``_amex`` succeed (``capture_method=manual``: ``requires_capture`` with
  ``amount_capturable``; ``/capture`` with optional ``amount_to_capture`` then succeeds;
  ``/cancel`` works from ``requires_payment_method``, ``requires_capture``,
  ``requires_confirmation`` and ``requires_action``; wrong states answer 400
  ``payment_intent_unexpected_state``); ``pm_card_chargeDeclined*`` are 402 card errors
  carrying the ``payment_intent``; ``pm_card_authenticationRequired`` is, with
  ``off_session``, a 402 ``authentication_required`` decline and, on-session,
  ``requires_action`` with ``next_action.redirect_to_url`` (given a ``return_url``; else
  ``use_stripe_sdk``); ``pm_sim_processing`` / ``pm_sim_processing_fails`` stay
  ``processing`` for ``processing_delay_s`` (simulated clock) and then settle.
* **Connect**: the ``Stripe-Account: acct_...`` header scopes everything: objects live in
  the account that created them and every other account (and the platform) gets 404
  ``resource_missing`` for them and never lists or finds them; idempotency keys are per
  (API key, account). A header that is not an ``acct_`` id is a 403 (never saved).
* **Lists** (``GET /v1/payment_intents``, ``GET /v1/refunds``) are strongly consistent
  (no search lag), newest first, with ``limit`` (1-100, default 10), ``starting_after`` /
  ``ending_before``, ``has_more`` and ``created`` / ``created[gt|gte|lt|lte]`` (unix
  seconds) filters, plus ``customer`` (intents) or ``payment_intent`` (refunds).
* **Simulated clock**: real time plus an offset that only moves forward
  (:meth:`Simulator.advance_clock`, :meth:`SimulatorControl.advance_clock`,
  ``POST /_sim/clock {"advance_s": N}``, ``GET /_sim/clock``). ``created`` timestamps of
  new objects, search lag, idempotency-key expiry and settling of ``processing`` intents
  follow it; webhook delivery delays and signature timestamps stay on real time.
* **SendGrid** (``POST /v3/mail/send``, v3 JSON body): validation errors in SendGrid's
  ``{"errors": [...]}`` shape, 202 with ``X-Message-Id`` on success. SendGrid has no
  idempotency: a re-sent request is delivered again.
* **Control plane** (``/_sim/...``, JSON, no auth) so tests in another process can
  inject faults, advance the clock, reset state and inspect what happened (see
  :class:`SimulatorControl`).
* **Webhooks**: with a target set (constructor ``webhook_url``/``webhook_secret``,
  :meth:`Simulator.set_webhook` or ``POST /_sim/webhooks``), PaymentIntent status changes
  (``payment_intent.succeeded``, ``.processing``, ``.payment_failed``,
  ``.requires_action``, ``.amount_capturable_updated``, ``.canceled``) and refunds
  (``charge.refunded``) are POSTed as Stripe events, signed like Stripe
  (``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``), from a
  background thread so API answers are never delayed; ``processing`` intents settle on a
  timer so their final event is sent without anyone reading them. A delivery answered
  non-2xx (or not at all) is retried a few times. ``GET /_sim/webhooks`` lists deliveries.

Fault model
-----------
Each provider (``stripe``, ``sendgrid``) has its own :class:`FaultConfig`, replaced
wholesale by :meth:`Simulator.set_faults` / ``POST /_sim/faults``. For every provider
request:

1. ``outage`` -> 503 immediately, before authentication (not executed, not saved).
   Then authentication (401, never saved) and, for Stripe, the ``Stripe-Account`` header
   (403, never saved).
2. Idempotency check (Stripe POST with a key): 409 / 400 mismatch / replay decision;
   a fresh key is marked *in flight* so concurrent duplicates see 409.
3. ``latency_ms`` sleep.
4. Probabilistic faults, each drawn independently from a seeded ``random.Random``
   (skipped entirely when ``first_try_only`` is set and the key was seen before),
   applied in this order: ``rate_429`` (429, nothing executed or saved),
   ``rate_cut_before_execute`` (TCP reset, nothing executed or saved), ``rate_500``
   (500 saved against the key, nothing executed: a resend with the key gets the 500 and
   no object exists), then the request executes, then ``rate_500_after_execute`` (500
   saved instead of the real response: the resend gets the 500 although the object
   exists and lists find it),
   ``rate_cut_after_execute`` (real response saved, connection reset) and
   ``rate_timeout`` (real response saved, answer delayed by ``timeout_sleep_s``).
   On an idempotent replay the "before" faults still apply and the "after" faults act
   on the replayed response, but nothing new is saved.

``search_lag_s`` hides objects younger than that (simulated clock) from search, not
from list or retrieve, and ``processing_delay_s`` is how long ``pm_sim_processing*``
intents stay ``processing``.
Webhook faults (Stripe's config): ``webhook_duplicate_rate`` delivers an event twice with
that probability; ``webhook_delay_ms`` holds each event that long before delivery; with
``webhook_reorder`` set, once the oldest held event is due every queued event goes out
newest first (so with a delay, ``succeeded`` can arrive before ``processing``).

Every provider request is appended to the requests log (with its ``idempotency_key`` and
``account``) with ``fault`` set to
the name of the fault field that fired (``"outage"``, ``"rate_429"``,
``"rate_cut_before_execute"``, ``"rate_500"``, ``"rate_500_after_execute"``,
``"rate_cut_after_execute"``, ``"rate_timeout"``) or None, and
``status`` None when the connection was cut. :meth:`Simulator.reset` clears objects,
logs, faults *and* saved idempotency keys, re-seeds the fault RNG and sets the simulated
clock back to real time (offset 0).
"""

from __future__ import annotations

from orchestrator.dev.simulator.control import SimulatorControl
from orchestrator.dev.simulator.faults import FaultConfig
from orchestrator.dev.simulator.server import Simulator, serve
from orchestrator.dev.simulator.webhooks import sign_webhook

__all__ = ["FaultConfig", "Simulator", "SimulatorControl", "serve", "sign_webhook"]
