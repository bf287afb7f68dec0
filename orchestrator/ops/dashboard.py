"""The ``/ops/`` dashboard page: server-rendered HTML, an inline SVG chart, no scripts.

Every value is escaped; forms POST back with the session's CSRF token. Nothing is fetched
from elsewhere (the page works with no internet access).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from orchestrator.models import Job

CHART_MINUTES = 60
CHART_WIDTH_PX = 720
CHART_HEIGHT_PX = 180
# One color per attempt outcome, readable on white.
OUTCOME_COLORS = {
    "succeeded": "#2e7d32",
    "pending": "#0277bd",
    "permanent": "#6a1b9a",
    "not_executed": "#ef6c00",
    "ambiguous": "#c62828",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}
.notice{background:#fff8e1;border:1px solid #ffb300;padding:.5rem}
form.inline{display:inline}
"""


def render_dashboard(
    *,
    counts: dict[str, int],
    settled: dict[str, int],
    dead: Sequence[Job],
    broker_letters: Sequence[dict[str, Any]],
    breakers: Sequence[dict[str, Any]],
    points: Sequence[dict[str, Any]],
    csrf: str,
    notice: str | None,
    now: datetime | None = None,
    drift: dict[str, Any] | None = None,
) -> str:
    """The page. ``counts`` are the live jobs by state and ``settled`` the settles ever by
    state (:class:`orchestrator.ops.service.JobCounts`); ``drift`` is
    :meth:`orchestrator.ops.service.Operations.drift`'s answer."""
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>orchestrator ops</title><style>{_STYLE}</style></head><body>",
        "<h1>orchestrator ops</h1>",
        '<form method="post" action="/ops/logout" class="inline">'
        '<button type="submit">Sign out</button></form>',
    ]
    if notice:
        parts.append(f'<p class="notice" id="notice">{escape(notice)}</p>')
    parts += [
        _counts(counts, settled),
        "<h2>Attempts per minute (last hour)</h2>",
        attempts_chart(points, now or datetime.now(UTC)),
        _breakers(breakers),
        _drift(drift or {"counts": {}, "drift": []}),
        _dlq(dead, csrf),
        _broker(broker_letters),
        "</body></html>",
    ]
    return "\n".join(parts)


def render_replay_confirmation(job: Job, csrf: str) -> str:
    """The second step of replaying a dead ``ambiguous`` job: what the risk is, and a form
    that POSTs the replay again with ``accept_duplicate_risk=yes`` (and the CSRF token)."""
    jid = escape(job.id)
    to = job.params.get("to") if isinstance(job.params, dict) else None
    if isinstance(to, list):
        to = ", ".join(str(x) for x in to)
    target = f" to {escape(str(to))}" if to else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>orchestrator ops: confirm replay</title><style>{_STYLE}</style></head><body>"
        "<h1>Confirm replay</h1>"
        f'<p class="notice" id="duplicate-risk">Job <code>{jid}</code> '
        f"({escape(str(job.kind))}{target} via {escape(job.provider)}) ended "
        "<strong>ambiguous</strong>: its last call may have been delivered, and "
        f"{escape(job.provider)} keeps no idempotency keys. Replaying it may deliver it "
        "<strong>a second time</strong>. The replay is audited as accepting that risk.</p>"
        f'<form method="post" action="/ops/dlq/{jid}/replay">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<input type="hidden" name="accept_duplicate_risk" value="yes">'
        '<label>Reason <input name="reason" maxlength="500"></label> '
        f'<button type="submit" id="confirm-replay-{jid}">Replay anyway</button></form>'
        '<p><a href="/ops/" id="cancel-replay">Cancel: leave it dead</a></p>'
        "</body></html>"
    )


def _counts(counts: dict[str, int], settled: dict[str, int]) -> str:
    live = "".join(
        f'<tr><th>{escape(state)}</th><td id="count-{escape(state)}">{n}</td></tr>'
        for state, n in counts.items()
    )
    ever = "".join(
        f'<tr><th>{escape(state)}</th><td id="settled-{escape(state)}">{n}</td></tr>'
        for state, n in settled.items()
    )
    return (
        f'<h2>Live jobs by state</h2><table id="counts">{live}</table>'
        f'<h2>Settled ever</h2><table id="settled">{ever}</table>'
    )


def _breakers(breakers: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            b.get("provider"),
            b.get("state"),
            b.get("consecutive_failures", ""),
            b.get("next_probe_at") or "",
        ]
        for b in breakers
    ]
    columns = ["provider", "state", "consecutive failures", "next probe"]
    return _table("Breakers", "breakers", columns, rows, "No breaker state available.")


def _drift(drift: dict[str, Any]) -> str:
    """Ledger drift: rows by kind, then the newest rows."""
    counts = "".join(
        f'<tr><th>{escape(kind)}</th><td id="drift-{escape(kind)}">{n}</td></tr>'
        for kind, n in drift["counts"].items()
    )
    fields = ("found_at", "kind", "job_id", "provider_ref", "source", "detail")
    rows = [[d[name] or "" for name in fields] for d in drift["drift"]]
    columns = ["found", "kind", "job", "provider object", "source", "detail"]
    latest = _table("Latest ledger drift", "drift", columns, rows, "No drift recorded.")
    return f'<h2>Ledger drift</h2><table id="drift-counts">{counts}</table>{latest}'


def _dlq(dead: Sequence[Job], csrf: str) -> str:
    head = (
        "<tr><th>job</th><th>kind</th><th>provider</th><th>amount</th><th>dead reason</th>"
        "<th>last error</th><th>attempts</th><th>created</th><th></th></tr>"
    )
    token = escape(csrf)
    rows = []
    for job in dead:
        jid = escape(job.id)
        amount = f"{job.amount} {job.currency}" if job.amount is not None else ""
        rows.append(
            f'<tr id="dead-{jid}"><td><code>{jid}</code></td><td>{escape(str(job.kind))}</td>'
            f"<td>{escape(job.provider)}</td><td>{escape(amount)}</td>"
            f"<td>{escape(job.dead_reason or '')}</td>"
            f"<td>{escape(job.last_error_code or '')} {escape((job.last_error or '')[:120])}</td>"
            f"<td>{job.attempts}/{job.max_attempts}</td>"
            f"<td>{escape(job.created_at.isoformat(timespec='seconds'))}</td><td>"
            f'<form method="post" action="/ops/dlq/{jid}/replay" class="inline">'
            f'<input type="hidden" name="csrf" value="{token}">'
            f'<button type="submit" id="replay-{jid}">Replay</button></form> '
            f'<form method="post" action="/ops/dlq/{jid}/discard" class="inline">'
            f'<input type="hidden" name="csrf" value="{token}">'
            f'<input name="reason" placeholder="reason" required maxlength="500">'
            f'<button type="submit" id="discard-{jid}">Discard</button></form></td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="9">The dead-letter queue is empty.</td></tr>'
    return f'<h2>Dead-letter queue (newest 50)</h2><table id="dlq">{head}{body}</table>'


def _broker(letters: Sequence[dict[str, Any]]) -> str:
    rows = [[x["dead_lettered_at"], x["job_id"], x["job_state"], x["action"]] for x in letters]
    columns = ["dead-lettered", "job", "job state then", "action"]
    return _table("Broker dead letters", "broker", columns, rows, "None.")


def _table(
    title: str, table_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str
) -> str:
    """A titled table (a header row, then one row a item, every cell escaped), or the title
    and ``empty`` when there are no rows."""
    if not rows:
        return f"<h2>{title}</h2><p>{empty}</p>"
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<h2>{title}</h2><table id="{table_id}"><tr>{head}</tr>{body}</table>'


def attempts_chart(points: Sequence[dict[str, Any]], now: datetime) -> str:
    """An inline SVG line chart: one line per outcome, one point per minute."""
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=CHART_MINUTES - 1)
    series: dict[str, list[int]] = {}
    for p in points:
        minute = datetime.fromisoformat(p["minute"]).astimezone(UTC)
        slot = int((minute - start).total_seconds() // 60)
        if 0 <= slot < CHART_MINUTES:
            series.setdefault(p["outcome"], [0] * CHART_MINUTES)[slot] += int(p["count"])
    top = max((max(v) for v in series.values()), default=0) or 1
    step = CHART_WIDTH_PX / (CHART_MINUTES - 1)
    lines = []
    for outcome, values in sorted(series.items()):
        coords = " ".join(
            f"{i * step:.1f},{CHART_HEIGHT_PX - v * CHART_HEIGHT_PX / top:.1f}"
            for i, v in enumerate(values)
        )
        color = OUTCOME_COLORS.get(outcome, "#555")
        lines.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}">'
            f"<title>{escape(outcome)}</title></polyline>"
        )
    legend = " ".join(
        f'<span style="color:{OUTCOME_COLORS.get(o, "#555")}">&#9632; {escape(o)} ({sum(v)})</span>'
        for o, v in sorted(series.items())
    )
    return (
        f'<svg id="attempts-chart" width="{CHART_WIDTH_PX}" height="{CHART_HEIGHT_PX}" '
        f'viewBox="0 0 {CHART_WIDTH_PX} {CHART_HEIGHT_PX}" role="img" '
        f'aria-label="attempts per minute" style="border:1px solid #ccc">'
        f"{''.join(lines)}</svg><p>max {top}/min &middot; {legend or 'no attempts'}</p>"
    )
