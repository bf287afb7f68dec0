"""The background batcher: items handed over reach the handler in order, in batches."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from orchestrator.background import Batcher


def test_items_are_handled_in_order_and_close_handles_later_ones_at_once() -> None:
    batches: list[list[int]] = []
    release = threading.Event()

    def handle(items: Sequence[int]) -> None:
        release.wait(5)
        batches.append(list(items))

    batcher = Batcher(handle, name="test-batcher", gather_s=0.01)
    for item in (1, 2, 3):
        batcher.put(item)
    release.set()
    batcher.handle_now([4])  # after everything put before it
    assert batcher.wait_idle(5)
    assert [i for batch in batches for i in batch] == [1, 2, 3, 4]
    assert len(batches) <= 2  # gathered, not one call per item
    batcher.close(5)
    batcher.put(5)  # no thread any more: handled before put returns
    assert batches[-1] == [5]
