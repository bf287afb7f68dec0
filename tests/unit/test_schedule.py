"""PostgreSQL owns the schedule: the dispatcher puts only short delays (within
``ORCHESTRATOR_BROKER_DELAY_WINDOW_S``) in the broker, and the clock sleeps until the next
scheduled job comes due (bounded by its interval and a small minimum)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.broker import EXECUTE_ACTOR, Dispatcher
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.maintenance.schedule import MIN_LOOK_AGAIN_S, lead_s, look_again_s, wait_s


class RecordingBroker:
    """Remembers what was enqueued, with its delay (ms, or None)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], int | None]] = []

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        self.sent.append((message.actor_name, tuple(message.args), delay))
        return message


def _dispatcher(window_s: float | None = None) -> tuple[Dispatcher, RecordingBroker]:
    broker = RecordingBroker()
    if window_s is None:
        return Dispatcher(broker, "q"), broker  # type: ignore[arg-type]
    return Dispatcher(broker, "q", delay_window_s=window_s), broker  # type: ignore[arg-type]


def test_a_delay_within_the_window_is_a_short_broker_delay() -> None:
    dispatcher, broker = _dispatcher(2.0)
    assert dispatcher.schedule("j1", 1.5) is True
    assert dispatcher.schedule("j2", 2.0) is True
    assert dispatcher.schedule("j3", 0.0) is True
    assert broker.sent == [
        (EXECUTE_ACTOR, ("j1",), 1500),
        (EXECUTE_ACTOR, ("j2",), 2000),
        (EXECUTE_ACTOR, ("j3",), None),
    ]


def test_a_later_delay_sends_nothing() -> None:
    """Past the window the job's next_attempt_at is the schedule: the clock sends it."""
    dispatcher, broker = _dispatcher(2.0)
    assert dispatcher.carries(2.01) is False
    assert dispatcher.schedule("j1", 2.01) is False
    assert dispatcher.schedule("j2", 30.0) is False
    assert dispatcher.schedule("j3", 3600.0) is False
    assert broker.sent == []


def test_a_window_of_zero_never_delays_in_the_broker() -> None:
    dispatcher, broker = _dispatcher(0.0)
    assert dispatcher.schedule("now", 0.0) is True
    assert dispatcher.schedule("later", 0.05) is False
    assert broker.sent == [(EXECUTE_ACTOR, ("now",), None)]


def test_send_is_unchanged_and_the_default_window_is_the_settings_default() -> None:
    dispatcher, broker = _dispatcher()
    dispatcher.send("j1")
    assert broker.sent == [(EXECUTE_ACTOR, ("j1",), None)]
    settings = load_settings(database_url="postgresql://x/y", redis_url="redis://x")
    assert dispatcher.delay_window_s == settings.broker_delay_window_s == 2.0


def test_the_window_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_BROKER_DELAY_WINDOW_S", "0")
    settings = load_settings(database_url="postgresql://x/y", redis_url="redis://x")
    assert settings.broker_delay_window_s == 0.0
    monkeypatch.setenv("ORCHESTRATOR_BROKER_DELAY_WINDOW_S", "-1")
    with pytest.raises(ConfigError, match="ORCHESTRATOR_BROKER_DELAY_WINDOW_S"):
        load_settings(database_url="postgresql://x/y", redis_url="redis://x")


@pytest.mark.parametrize(
    ("until_pass_s", "due_in_s", "look_again", "expected"),
    [
        (5.0, None, 10.0, 5.0),  # nothing scheduled: the next pass
        (5.0, None, 2.0, 2.0),  # but look again within the window for new ones
        (5.0, 1.25, 2.0, 1.25),  # a job due before then: wake for it
        (5.0, 9.0, 10.0, 5.0),  # due after the next pass: the pass comes first
        (5.0, 0.0, 2.0, 0.02),  # due now (a backlog): at once, but never spinning
        (5.0, -3.0, 2.0, 0.02),
        (-0.5, None, 2.0, 0.02),  # the pass is overdue
    ],
)
def test_the_clock_wakes_when_the_next_job_is_due(
    until_pass_s: float, due_in_s: float | None, look_again: float, expected: float
) -> None:
    assert wait_s(until_pass_s, due_in_s, look_again, 0.02) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("window", "lead", "look_again"),
    [(2.0, 1.0, 1.0), (10.0, 1.0, 9.0), (0.5, 0.25, 0.25), (0.0, 0.0, MIN_LOOK_AGAIN_S)],
)
def test_the_clock_sends_ahead_and_looks_for_new_jobs_in_time(
    window: float, lead: float, look_again: float
) -> None:
    """A job scheduled in PostgreSQL is due more than the window ahead, to be sent ``lead``
    before: looking every window - lead, the clock sees each one before it is to be sent."""
    assert lead_s(window) == pytest.approx(lead)
    assert look_again_s(window) == pytest.approx(look_again)
    assert lead_s(window) <= window  # what it sends ahead, the broker may carry
