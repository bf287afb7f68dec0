"""Expired leases: ``running`` jobs whose lease passed become ``unknown`` (their worker died,
maybe mid-call) and are sent to be resolved by lookup."""

from __future__ import annotations

from functools import partial

from orchestrator.broker import Dispatcher
from orchestrator.db.store import Store
from orchestrator.maintenance.sweeps import Resend


class ExpireLeases(Resend[str]):
    """The :class:`Resend` of jobs whose lease expired (each one logged as a warning: a worker
    died); :meth:`~Resend.run_once` marks them ``unknown`` as it selects them."""

    __slots__ = ()

    def __init__(self, store: Store, dispatcher: Dispatcher, owner: str) -> None:
        super().__init__(
            "leases_expired",
            "clock.leases_expired",
            partial(store.expire_leases, owner),
            store.count_expired_leases,
            dispatcher.send,
            warn=True,
        )
