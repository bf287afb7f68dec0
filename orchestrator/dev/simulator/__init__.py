"""In-process Stripe-, SendGrid- and Razorpay-compatible HTTP API for tests, demos and
benchmarks.

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
* **Razorpay** (under ``/razorpay``: the SDK's ``base_url`` is ``<url>/razorpay``, see
  :attr:`Simulator.razorpay_url`, so ``POST /v1/orders`` arrives as
  ``POST /razorpay/v1/orders``; JSON bodies as the official ``razorpay`` SDK sends them).
  Basic auth with ``key_id:key_secret`` (constructor ``razorpay_key_id`` /
  ``razorpay_key_secret``; without them any ``rzp_test_`` key id with a secret passes); wrong
  or missing credentials are 401 ``BAD_REQUEST_ERROR`` "Authentication failed", never
  executed. Errors use Razorpay's shape ``{"error": {"code", "description", "source",
  "step", "reason", "metadata", "field"}}`` with Razorpay's own descriptions; an unknown id is
  a 400 "The id provided does not exist", an unknown URL a 400. Served:

  - Orders: ``POST /v1/orders`` (``amount`` in the subunit, at least 1.00; ``currency``;
    ``receipt`` up to 40 chars; ``notes`` up to 15 pairs, empty notes answered as ``[]``;
    ``payment_capture``, default on; other documented create fields accepted and ignored,
    unknown ones refused as ``extra_field_sent``), ``GET /v1/orders/:id``, ``GET /v1/orders``
    (``receipt`` filter), ``GET /v1/orders/:id/payments``. Status ``created`` ->
    ``attempted`` (first payment) -> ``paid`` (a payment captured; stays paid after refunds).
    A **reused receipt** follows the *receipt mode* (constructor ``razorpay_receipt_mode``,
    :meth:`Simulator.set_receipt_mode`, ``POST /_sim/razorpay/settings
    {"receipt_mode": ...}``; kept by reset): ``"reject"`` (default) answers 400 "Order
    receipt should be unique." (``metadata.order_id`` names the holder), ``"return_existing"``
    answers the order that has the receipt. The ``unique_receipt`` create field is accepted
    and does not change this.
  - Recurring payments: ``POST /v1/payments/create/recurring`` (all documented fields
    required but ``notes`` / ``description``; ``recurring`` "1"; amount and currency must
    equal the order's) -> ``{"razorpay_payment_id", "razorpay_order_id",
    "razorpay_signature"}``, the signature being hex HMAC-SHA256 of
    ``"<order_id>|<payment_id>"`` with the key secret (the SDK's
    ``utility.verify_payment_signature`` accepts it). ``GET /v1/payments[/:id]`` returns
    payment entities (``status`` created / authorized / captured / refunded / failed).
    **Test tokens** (matched by prefix): ``token_success...`` is captured at once;
    ``token_fail...`` fails at once (400 "Payment failed", ``metadata`` carrying
    ``payment_id`` and ``order_id``; the failed payment is kept);
    ``token_fail_insufficient_funds`` fails likewise with "Payment processing failed due to
    insufficient balance"; ``token_pending...`` stays ``created`` for ``processing_delay_s``
    (simulated clock) and is then captured; ``token_pending_fail...`` then fails. Any other
    ``token_`` id succeeds; a token not starting ``token_`` is a 400. **One successful
    payment per order**, as Razorpay documents: a payment on an order that is ``paid`` or has
    an ``authorized`` payment is 400 "Payment already done for this order."; a pending debit
    that goes through after another payment paid the order is refunded automatically
    (``refunded``, never captured). With ``payment_capture`` off a payment stays
    ``authorized`` until ``POST /v1/payments/:id/capture`` (amount must equal), and is
    refunded automatically after 5 days (simulated clock) if never captured.
  - Refunds: ``POST /v1/payments/:id/refund`` (``amount`` optional: what remains;
    ``speed`` normal / optimum, ``notes``, ``receipt``), ``GET /v1/refunds[/:id]``,
    ``GET /v1/payments/:id/refunds[/:refund_id]``. Only captured payments; the total never
    exceeds the captured amount ("The refund amount provided is greater than amount
    captured" / "... than the unrefunded amount" / "The payment has been fully refunded
    already"). A normal refund is ``pending`` for ``processing_delay_s`` then ``processed``;
    an optimum (instant) one is processed at once. The payment's ``amount_refunded`` and
    ``refund_status`` count refunds from creation; fully refunded, it is ``refunded``.
    ``X-Refund-Idempotency`` (at least 10 of ``[A-Za-z0-9_-]``, else 400): the first
    successful refund for a key is saved and the same key and body answer it again (no new
    refund, also after an ``rate_500_after_execute`` fault); another body with the key is a
    400 "Different request with the same idempotency key has already been processed."; a
    key whose first request is still executing is a 409. Failed requests are not saved: a
    retry executes again. Keys are forgotten like Stripe's (24 h, simulated clock).
  - Lists are Razorpay collections ``{"entity": "collection", "count", "items"}``, newest
    first, with ``count`` (1-100, default 10), ``skip``, ``from`` / ``to`` (unix seconds).
  - Webhooks: with a Razorpay target set (constructor ``razorpay_webhook_url`` /
    ``razorpay_webhook_secret``, :meth:`Simulator.set_razorpay_webhook` or
    ``POST /_sim/razorpay/webhooks {"url", "secret"}``; kept by reset) the events
    ``payment.captured``, ``payment.failed``, ``payment.authorized`` (manual capture only),
    ``order.paid`` and ``refund.processed`` are POSTed in Razorpay's event shape
    (``{"entity": "event", "account_id", "event", "contains", "payload": {"payment":
    {"entity": ...}, ...}, "created_at"}``) with ``X-Razorpay-Signature`` (hex HMAC-SHA256 of
    the raw body with the webhook secret) and ``x-razorpay-event-id`` (one per event, kept by
    retries and duplicate deliveries), from the same background sender, retried the same way
    and listed by ``GET /_sim/webhooks`` (``provider`` ``"razorpay"``).
  - Inspection: :meth:`Simulator.razorpay_orders` / ``razorpay_payments`` /
    ``razorpay_refunds`` (and :class:`SimulatorControl`'s), ``GET /_sim/razorpay/orders``,
    ``/payments``, ``/refunds`` and ``/settings``: every object, timers settled first, e.g.
    to assert exactly one captured payment per order.
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
Each provider (``stripe``, ``sendgrid``, ``razorpay``) has its own :class:`FaultConfig`,
replaced wholesale by :meth:`Simulator.set_faults` / ``POST /_sim/faults``. For every
provider request:

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
   no object exists), ``rate_html_502`` (an HTML 502 page from a gateway, not JSON; nothing
   executed or saved), then the request executes, then ``rate_500_after_execute`` (500
   saved instead of the real response: the resend gets the 500 although the object
   exists and lists find it), ``rate_html_504_after_execute`` (real response saved, an
   HTML 504 page answered), ``rate_cut_after_execute`` (real response saved, connection
   reset) and ``rate_timeout`` (real response saved, answer delayed by ``timeout_sleep_s``).
   Razorpay differs in what a key keeps: 500s are never saved (a retry executes again) and
   after ``rate_500_after_execute`` the refund that was made is what the key replays. Its
   outage and 5xx bodies are ``SERVER_ERROR``, its 429 a ``BAD_REQUEST_ERROR`` with
   ``Retry-After``.
   On an idempotent replay the "before" faults still apply and the "after" faults act
   on the replayed response, but nothing new is saved.

``search_lag_s`` hides objects younger than that (simulated clock) from search, not
from list or retrieve, and ``processing_delay_s`` is how long ``pm_sim_processing*``
intents stay ``processing`` (Razorpay's: how long ``token_pending*`` debits stay ``created``
and normal refunds ``pending``).
Webhook faults (each provider's config for its own events; ``webhook_reorder`` on either
reorders the shared queue): ``webhook_duplicate_rate`` delivers an event twice with
that probability; ``webhook_delay_ms`` holds each event that long before delivery; with
``webhook_reorder`` set, once the oldest held event is due every queued event goes out
newest first (so with a delay, ``succeeded`` can arrive before ``processing``).

Every provider request is appended to the requests log (with its ``provider``, ``path``,
without the ``/razorpay`` prefix for Razorpay, ``idempotency_key``, Razorpay's being the
``X-Refund-Idempotency`` header, and ``account``) with ``fault`` set to
the name of the fault field that fired (``"outage"``, ``"rate_429"``,
``"rate_cut_before_execute"``, ``"rate_500"``, ``"rate_html_502"``,
``"rate_500_after_execute"``, ``"rate_html_504_after_execute"``,
``"rate_cut_after_execute"``, ``"rate_timeout"``) or None, and
``status`` None when the connection was cut. :meth:`Simulator.reset` clears objects,
logs, faults *and* saved idempotency keys, re-seeds the fault RNG and sets the simulated
clock back to real time (offset 0).
"""

from __future__ import annotations

from orchestrator.dev.simulator.control import SimulatorControl
from orchestrator.dev.simulator.faults import FaultConfig
from orchestrator.dev.simulator.server import Simulator, serve
from orchestrator.dev.simulator.webhooks import sign_razorpay_webhook, sign_webhook

__all__ = [
    "FaultConfig",
    "Simulator",
    "SimulatorControl",
    "serve",
    "sign_razorpay_webhook",
    "sign_webhook",
]
