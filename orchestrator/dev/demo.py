"""``orchestrator demo``: the whole product working, on a local stack, in one command.

Enqueues charges and sends against a running ``orchestrator dev`` stack (or one started for
the occasion), with the simulator injecting a realistic fault mix, shows live progress by
state, then proves the money invariants on what happened:

* every job settled (``succeeded``, ``failed``, ``dead``): no lost job;
* provider objects per job from the simulator's own records, grouped by
  ``metadata.orchestrator_job_id`` (``custom_args`` for mail): duplicates 0;
* the ledger matches the provider: a charge job is ``succeeded`` exactly when the simulator
  holds a succeeded PaymentIntent for it.

Only this run's jobs are counted (a dev stack may hold others); the simulator's faults are
switched off again at the end.
"""

from __future__ import annotations

import random
import shlex
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.api import Orchestrator
from orchestrator.config import load_settings
from orchestrator.dev.devstack import DEV_EMAIL_FROM, DEV_SENDGRID_KEY, DEV_STRIPE_KEY, StackInfo
from orchestrator.dev.simulator import SimulatorControl
from orchestrator.logs import get_logger
from orchestrator.models import JobState

log = get_logger(__name__)

# Payment methods and their share: most cards pay, some decline (`failed` after one call,
# never retried), a few stay `processing` at the provider and settle by polling.
PAYMENT_METHOD_MIX: tuple[tuple[str, float], ...] = (
    ("pm_card_visa", 0.85),
    ("pm_card_chargeDeclined", 0.10),
    ("pm_sim_processing", 0.05),
)
# Stripe faults, on first tries only (a retry with the same key sees a healthy provider, as
# with real transient trouble): 429s, connections cut after the charge executed, saved 500s.
STRIPE_FAULTS: Mapping[str, float | bool] = {
    "latency_ms": 40.0,
    "rate_429": 0.05,
    "rate_cut_after_execute": 0.05,
    "rate_500": 0.03,
    "first_try_only": True,
}
# SendGrid has no idempotency keys: a cut connection leaves the send's outcome unknown, and
# such a send goes `dead` (reason ambiguous) rather than risk a second email.
SENDGRID_FAULTS: Mapping[str, float | bool] = {
    "latency_ms": 20.0,
    "rate_429": 0.05,
    "rate_cut_after_execute": 0.03,
}
# A short full Stripe outage once this share of the jobs has settled: the breaker opens,
# jobs wait for its probe instead of hammering the provider, and nothing is lost.
OUTAGE_AT_SETTLED_SHARE = 0.3
DEFAULT_OUTAGE_S = 2.0
DEFAULT_TIMEOUT_S = 300.0
POLL_S = 0.5
# Without a terminal, a progress line this often (s) instead of a live table.
PLAIN_PROGRESS_EVERY_S = 2.0
FINAL_STATES = frozenset(str(s) for s in JobState if s.is_terminal)
STATE_ORDER: tuple[str, ...] = tuple(str(s) for s in JobState)
# Amounts between $5 and $200, in cents.
MIN_AMOUNT_CENTS, MAX_AMOUNT_CENTS = 500, 20_000


@dataclass(frozen=True, slots=True)
class DemoOptions:
    charges: int = 500
    sends: int = 100
    seed: int = 42
    timeout_s: float = DEFAULT_TIMEOUT_S
    outage_s: float = DEFAULT_OUTAGE_S


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo found; ``ok`` when every job settled with no duplicate and no mismatch."""

    ok: bool
    settled: bool
    charges: int
    sends: int
    elapsed_s: float
    succeeded: int
    failed: int
    dead: int
    unsettled: int
    states: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    provider_objects: dict[str, int]
    duplicates: int
    ledger_mismatches: int
    settle_p50_s: float | None
    settle_p99_s: float | None
    breaker_trips: dict[str, int]
    dlq_size: int
    faults_injected: dict[str, int]
    next_steps: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def objects_per_job(objects: Sequence[Mapping[str, Any]], key: str) -> Counter[str]:
    """How many provider objects carry each job id (``metadata`` or ``custom_args``)."""
    counts: Counter[str] = Counter()
    for obj in objects:
        job_id = (obj.get(key) or {}).get("orchestrator_job_id")
        if job_id:
            counts[str(job_id)] += 1
    return counts


def pick_payment_method(rng: random.Random) -> str:
    methods = [method for method, _ in PAYMENT_METHOD_MIX]
    weights = [weight for _, weight in PAYMENT_METHOD_MIX]
    return rng.choices(methods, weights=weights)[0]


class Demo:
    """One demo run against ``stack``; ``run()`` returns its summary."""

    def __init__(
        self,
        stack: StackInfo,
        options: DemoOptions,
        *,
        console: Console,
        live: bool,
    ) -> None:
        self.stack = stack
        self.options = options
        self.console = console
        self.live = live
        self.run_id = uuid.uuid4().hex[:8]
        self.charge_ids: list[str] = []
        self.send_ids: list[str] = []
        self.enqueue_error: BaseException | None = None
        self.orch = Orchestrator(
            load_settings(
                database_url=stack.database_url,
                redis_url=stack.redis_url,
                stripe_api_key=DEV_STRIPE_KEY,
                stripe_api_base=stack.simulator_url,
                sendgrid_api_key=DEV_SENDGRID_KEY,
                sendgrid_api_base=stack.simulator_url,
                email_from=DEV_EMAIL_FROM,
            )
        )
        self.sim = SimulatorControl(stack.simulator_url)

    def close(self) -> None:
        self.orch.close()
        self.sim.close()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> DemoSummary:
        trips_before = self._breaker_trips()
        requests_before = len(self.sim.requests_log())
        self._set_faults(outage=False)
        started = time.monotonic()
        enqueuer = threading.Thread(target=self._enqueue_all, name="demo-enqueue", daemon=True)
        enqueuer.start()
        try:
            settled = self._watch(started, enqueuer)
        finally:
            self.sim.set_faults("all")  # back to a healthy provider for whoever comes next
            enqueuer.join()
        if self.enqueue_error is not None:
            raise self.enqueue_error
        elapsed = time.monotonic() - started
        return self._summary(settled, elapsed, trips_before, requests_before)

    def _set_faults(self, *, outage: bool) -> None:
        self.sim.set_faults("stripe", **{**STRIPE_FAULTS, "outage": outage})
        self.sim.set_faults("sendgrid", **SENDGRID_FAULTS)

    def _enqueue_all(self) -> None:
        """Interleave charges and sends, as an application would, with stable keys."""
        rng = random.Random(self.options.seed)
        total = self.options.charges + self.options.sends
        kinds = ["charge"] * self.options.charges + ["send"] * self.options.sends
        rng.shuffle(kinds)
        try:
            for i, kind in enumerate(kinds):
                key = f"demo-{self.run_id}-{i:05d}"
                if kind == "charge":
                    self.charge_ids.append(self._charge(rng, key, i))
                else:
                    self.send_ids.append(self._send(key, i))
            log.info("demo.jobs_enqueued", run_id=self.run_id, jobs=total)
        except BaseException as exc:
            self.enqueue_error = exc

    def _charge(self, rng: random.Random, key: str, i: int) -> str:
        job = self.orch.charge(
            rng.randint(MIN_AMOUNT_CENTS, MAX_AMOUNT_CENTS),
            "usd",
            f"cus_demo{i % 50:03d}",
            pick_payment_method(rng),
            key,
            {"demo_run": self.run_id, "order": str(i)},
        )
        return job.id

    def _send(self, key: str, i: int) -> str:
        job = self.orch.send_email(
            f"customer{i % 50}@example.com",
            f"Your receipt #{i}",
            "Thank you for your order.",
            idempotency_key=key,
        )
        return job.id

    def _ids(self) -> list[str]:
        return [*self.charge_ids, *self.send_ids]

    def _states(self) -> dict[str, dict[str, int]]:
        """{kind: {state: n}} for this run's jobs so far."""
        rows = self.orch.ops_store.demo_states(self._ids())
        by_kind: dict[str, dict[str, int]] = {}
        for row in rows:
            by_kind.setdefault(row["kind"], {})[row["state"]] = int(row["n"])
        return by_kind

    def _watch(self, started: float, enqueuer: threading.Thread) -> bool:
        """Poll states until every job is final (True) or the timeout passes (False)."""
        total = self.options.charges + self.options.sends
        outage = _OutageWindow(self.options.outage_s, self._set_faults)
        render = self._render_live if self.live else self._render_plain
        with Live(console=self.console, auto_refresh=False, transient=False) as live_view:
            last_plain = 0.0
            while True:
                by_kind = self._states()
                states = _merge(by_kind)
                final = sum(n for s, n in states.items() if s in FINAL_STATES)
                elapsed = time.monotonic() - started
                outage.step(final / total if total else 1.0)
                if self.live:
                    live_view.update(render(elapsed, states, total, outage), refresh=True)
                elif elapsed - last_plain >= PLAIN_PROGRESS_EVERY_S:
                    self.console.print(
                        render(elapsed, states, total, outage), markup=False, soft_wrap=True
                    )
                    last_plain = elapsed
                done = not enqueuer.is_alive() and final == len(self._ids())
                if done or self.enqueue_error is not None:
                    outage.end()
                    if not self.live:
                        self.console.print(
                            render(elapsed, states, total, outage), markup=False, soft_wrap=True
                        )
                    return done and self.enqueue_error is None
                if elapsed > self.options.timeout_s:
                    outage.end()
                    return False
                time.sleep(POLL_S)

    def _render_plain(
        self, elapsed: float, states: Mapping[str, int], total: int, outage: _OutageWindow
    ) -> str:
        shown = " ".join(f"{s}={states[s]}" for s in STATE_ORDER if states.get(s))
        final = sum(n for s, n in states.items() if s in FINAL_STATES)
        note = "  [stripe outage]" if outage.active else ""
        return f"demo {elapsed:6.1f}s  settled {final}/{total}  {shown}{note}"

    def _render_live(
        self, elapsed: float, states: Mapping[str, int], total: int, outage: _OutageWindow
    ) -> Table:
        final = sum(n for s, n in states.items() if s in FINAL_STATES)
        title = f"orchestrator demo  {elapsed:5.1f}s  settled {final}/{total}"
        if outage.active:
            title += "  [bold red]stripe outage: breaker at work[/]"
        table = Table(title=title, title_justify="left")
        table.add_column("state")
        table.add_column("jobs", justify="right")
        table.add_column("", min_width=30)
        for state in STATE_ORDER:
            n = states.get(state, 0)
            bar_width = int(40 * n / total) if total else 0
            table.add_row(state, str(n), "█" * bar_width)
        return table

    # -- the summary -----------------------------------------------------------------------

    def _jobs(self) -> list[dict[str, Any]]:
        return self.orch.ops_store.demo_jobs(self._ids())

    def _breaker_trips(self) -> dict[str, int]:
        from orchestrator.breaker import SharedBreaker
        from orchestrator.providers.registry import provider_names

        breaker = SharedBreaker.from_settings(self.orch.settings)
        return {p: breaker.status(p).trips for p in provider_names()}

    def _summary(
        self,
        settled: bool,
        elapsed: float,
        trips_before: Mapping[str, int],
        requests_before: int,
    ) -> DemoSummary:
        jobs = self._jobs()
        by_kind: dict[str, dict[str, int]] = {}
        for job in jobs:
            kind_states = by_kind.setdefault(job["kind"], {})
            kind_states[job["state"]] = kind_states.get(job["state"], 0) + 1
        states = _merge(by_kind)
        intents = self.sim.payment_intents()
        pi_counts = objects_per_job(intents, "metadata")
        mail_counts = objects_per_job(self.sim.mail(), "custom_args")
        charge_counts = [pi_counts.get(i, 0) for i in self.charge_ids]
        send_counts = [mail_counts.get(i, 0) for i in self.send_ids]
        duplicates = sum(1 for n in [*charge_counts, *send_counts] if n > 1)
        settle_times = [float(j["settle_s"]) for j in jobs if j["settle_s"] is not None]
        trips_after = self._breaker_trips()
        requests = self.sim.requests_log()[requests_before:]
        faults = Counter(str(r["fault"]) for r in requests if r.get("fault"))
        mismatches = _ledger_mismatches(jobs, intents)
        final = sum(n for s, n in states.items() if s in FINAL_STATES)
        return DemoSummary(
            ok=settled and duplicates == 0 and mismatches == 0,
            settled=settled,
            charges=len(self.charge_ids),
            sends=len(self.send_ids),
            elapsed_s=round(elapsed, 2),
            succeeded=states.get("succeeded", 0),
            failed=states.get("failed", 0),
            dead=states.get("dead", 0),
            unsettled=len(jobs) - final,
            states=states,
            by_kind=by_kind,
            provider_objects={
                "payment_intents": sum(charge_counts),
                "charges_with_one_object": sum(1 for n in charge_counts if n == 1),
                "max_per_charge": max(charge_counts, default=0),
                "emails_delivered": sum(send_counts),
                "max_per_send": max(send_counts, default=0),
            },
            duplicates=duplicates,
            ledger_mismatches=mismatches,
            settle_p50_s=_round(percentile(settle_times, 50)),
            settle_p99_s=_round(percentile(settle_times, 99)),
            breaker_trips={p: trips_after[p] - trips_before.get(p, 0) for p in trips_after},
            dlq_size=self.orch.ops_store.dlq_size(),
            faults_injected=dict(sorted(faults.items())),
            next_steps={
                "dashboard": self.stack.dashboard_url,
                "dlq": f"{self._env_prefix()} orchestrator dlq list",
                "job": f"{self._env_prefix()} orchestrator jobs show <job id>",
                "database_url": self.stack.database_url,
                "redis_url": self.stack.redis_url,
            },
        )

    def _env_prefix(self) -> str:
        """What a shell needs for the CLI to reach this stack's database and Redis."""
        return shlex.join(
            ["env", f"DATABASE_URL={self.stack.database_url}", f"REDIS_URL={self.stack.redis_url}"]
        )


class _OutageWindow:
    """A full Stripe outage of ``duration_s``, starting once a share of the jobs settled."""

    def __init__(self, duration_s: float, set_faults: Callable[..., None]) -> None:
        self.duration_s = duration_s
        self.set_faults = set_faults
        self.started_at: float | None = None
        self.active = False

    def step(self, settled_share: float) -> None:
        if self.duration_s <= 0:
            return
        now = time.monotonic()
        if self.started_at is None and settled_share >= OUTAGE_AT_SETTLED_SHARE:
            self.started_at = now
            self.active = True
            self.set_faults(outage=True)
            log.info("demo.outage_started", duration_s=self.duration_s)
        elif (
            self.active and self.started_at is not None and now - self.started_at >= self.duration_s
        ):
            self.end()

    def end(self) -> None:
        if self.active:
            self.active = False
            self.set_faults(outage=False)
            log.info("demo.outage_ended")


def _merge(by_kind: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    merged: Counter[str] = Counter()
    for states in by_kind.values():
        merged.update(states)
    return dict(merged)


def _ledger_mismatches(jobs: Sequence[Mapping[str, Any]], intents: Sequence[Any]) -> int:
    """Charge jobs whose state disagrees with the provider: ``succeeded`` exactly when a
    succeeded PaymentIntent with the job's id and amount exists (DESIGN.md, invariant 4)."""
    paid: dict[str, set[int]] = {}
    for pi in intents:
        job_id = (pi.get("metadata") or {}).get("orchestrator_job_id")
        if job_id and pi.get("status") == "succeeded":
            paid.setdefault(str(job_id), set()).add(int(pi["amount"]))
    mismatches = 0
    for job in jobs:
        if job["kind"] != "charge" or job["state"] not in FINAL_STATES:
            continue
        is_paid = job["amount"] in paid.get(job["id"], set())
        if is_paid != (job["state"] == "succeeded"):
            mismatches += 1
    return mismatches


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_summary(summary: DemoSummary, console: Console) -> None:
    """The human summary: outcomes, invariants, timings, and where to look next."""
    table = Table(title="orchestrator demo: summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("jobs", f"{summary.charges} charges, {summary.sends} sends")
    table.add_row(
        "succeeded / failed / dead", f"{summary.succeeded} / {summary.failed} / {summary.dead}"
    )
    if summary.unsettled:
        table.add_row("[red]not settled[/]", str(summary.unsettled))
    objects = summary.provider_objects
    table.add_row(
        "provider objects per job",
        f"max {objects['max_per_charge']} per charge, {objects['max_per_send']} per send "
        f"({objects['payment_intents']} PaymentIntents, {objects['emails_delivered']} emails)",
    )
    dup_style = "green" if summary.duplicates == 0 else "bold red"
    table.add_row("duplicates", f"[{dup_style}]{summary.duplicates}[/]")
    table.add_row("ledger mismatches", str(summary.ledger_mismatches))
    table.add_row(
        "time to settle",
        f"p50 {_seconds(summary.settle_p50_s)}, p99 {_seconds(summary.settle_p99_s)}",
    )
    trips = ", ".join(f"{p} {n}" for p, n in summary.breaker_trips.items())
    table.add_row("breaker trips", trips)
    faults = ", ".join(f"{k} {v}" for k, v in summary.faults_injected.items()) or "none"
    table.add_row("faults injected", faults)
    table.add_row("DLQ size", str(summary.dlq_size))
    table.add_row("elapsed", f"{summary.elapsed_s:.1f}s")
    console.print(table)
    console.print("where to look next:")
    steps = summary.next_steps
    console.print(f"  dashboard   {steps['dashboard']}", highlight=False)
    for label, step in (("dead jobs", steps["dlq"]), ("one job", steps["job"])):
        console.print(f"  {label:<11} {step}", markup=False, highlight=False, soft_wrap=True)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def run(stack: StackInfo, options: DemoOptions, *, console: Console | None = None) -> DemoSummary:
    """Run the demo on ``stack``; progress goes to ``console`` (stderr by default)."""
    out = console or Console(file=sys.stderr)
    demo = Demo(stack, options, console=out, live=out.is_terminal)
    try:
        return demo.run()
    finally:
        demo.close()
