"""Stripe's side of the ledger audit: every PaymentIntent and Refund made for a job since a time.

Read through Stripe's LIST endpoints (``GET /v1/payment_intents`` and ``GET /v1/refunds`` with
``created[gte]``), which are strongly consistent: an object that exists is listed, unlike
search, which lags by up to an hour during incidents. Every page is read (auto-paging), in the
platform account or in one Connect account (``Stripe-Account``). Only objects carrying
``metadata.orchestrator_job_id`` are kept; what they mean for the ledger is decided by
:func:`orchestrator.ops.ledger.compare`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import stripe
from stripe import RequestOptions

from orchestrator.errors import ProviderUnavailable
from orchestrator.models import AttemptOutcome, JobKind
from orchestrator.ops.ledger import ProviderObject
from orchestrator.providers.stripe.objects import outcome_of_intent, outcome_of_refund
from orchestrator.validation import JOB_ID_METADATA_KEY

PROVIDER = "stripe"
# Objects per page (Stripe's maximum).
LIST_PAGE = 100


def list_objects(
    client: stripe.StripeClient, since: datetime, account: str | None
) -> list[ProviderObject]:
    """The PaymentIntents and Refunds created at or after ``since`` in ``account`` (None: the
    platform) that name a job; ProviderUnavailable when Stripe cannot be read."""
    created: stripe.params.PaymentIntentListParamsCreated = {"gte": int(since.timestamp())}
    options: RequestOptions = {"stripe_account": account} if account else {}
    try:
        intents = client.v1.payment_intents.list(
            {"created": created, "limit": LIST_PAGE}, options=options
        ).auto_paging_iter()
        found = _objects(JobKind.CHARGE, (pi.to_dict() for pi in intents), account)
        refunds = client.v1.refunds.list(
            {"created": {"gte": created["gte"]}, "limit": LIST_PAGE}, options=options
        ).auto_paging_iter()
        found += _objects(JobKind.REFUND, (r.to_dict() for r in refunds), account)
    except stripe.StripeError as exc:
        raise ProviderUnavailable(f"stripe listing failed: {type(exc).__name__}") from exc
    return found


def _objects(
    kind: JobKind, listed: Iterable[Mapping[str, Any]], account: str | None
) -> list[ProviderObject]:
    read = outcome_of_intent if kind is JobKind.CHARGE else outcome_of_refund
    found = []
    for obj in listed:
        job_id = (obj.get("metadata") or {}).get(JOB_ID_METADATA_KEY)
        if not job_id:
            continue
        currency = obj.get("currency")
        found.append(
            ProviderObject(
                provider=PROVIDER,
                kind=kind,
                ref=str(obj["id"]),
                job_id=str(job_id),
                amount=obj.get("amount"),
                currency=str(currency).lower() if currency else None,
                status=str(obj["status"]),
                successful=read(obj, None).kind is AttemptOutcome.SUCCEEDED,
                created=int(obj.get("created") or 0),
                account=account,
            )
        )
    return found
