"""StallWatch names what held a loop up: the stack of a stall, and full collections."""

from __future__ import annotations

import gc
import time

from runtime.stall_watch import MAX_STACKS, StallWatch


def _held_up(seconds: float) -> None:
    time.sleep(seconds)  # stands for a slow callback in the loop's thread


def test_a_stall_is_caught_once_with_the_frame_that_held_the_loop() -> None:
    with StallWatch(after_s=0.1, period_s=0.01) as watch:
        watch.beat()
        _held_up(0.4)
        watch.beat()
        time.sleep(0.05)  # younger than after_s: not a stall
    assert len(watch.stalls) == 1  # one stall, one stack, however long it lasts
    stall = watch.stalls[0]
    assert 0.1 < stall.late_s < 0.4
    assert stall.stack[-1].endswith("_held_up")
    assert "test_stall_watch.py" in stall.stack[-1]
    report = watch.report(since=stall.at - 1.0)
    assert report["stalls_caught"] == 1
    assert report["innermost"] == [{"frame": stall.stack[-1], "count": 1}]
    assert report["stalls"][0]["at_s"] == 1.0


def test_a_loop_that_beats_is_never_a_stall() -> None:
    with StallWatch(after_s=0.1, period_s=0.01) as watch:
        for _ in range(20):
            watch.beat()
            time.sleep(0.02)
    assert watch.stalls == []


def test_full_collections_are_timed_and_younger_ones_are_not() -> None:
    with StallWatch() as watch:
        gc.collect(0)
        gc.collect(1)
        assert watch.full_gc == []
        gc.collect()
    assert len(watch.full_gc) == 1
    assert watch.full_gc[0][1] >= 0.0
    assert watch.report(since=0.0)["full_gc"] == 1
    assert watch._on_gc not in gc.callbacks  # the hook leaves with the watch


def test_the_record_is_bounded() -> None:
    watch = StallWatch(after_s=0.0, period_s=0.001)
    with watch:
        for _ in range(MAX_STACKS + 50):
            watch.beat()
            time.sleep(0.003)
    assert len(watch.stalls) <= MAX_STACKS
