"""What held an event loop up: the stack it was in, and the collector's full passes.

A soak's client must not freeze its own video: when its event loop oversleeps, the
arrival gaps are the client's, not the server's. :class:`StallWatch` names the cause
of each stall instead of only counting it:

- a watcher thread that, when the loop's last :meth:`StallWatch.beat` is older than
  ``after_s``, takes the loop thread's stack (``sys._current_frames``) once per stall;
- a ``gc.callbacks`` hook that times every full (generation 2) collection, which
  holds the interpreter for its whole walk and so cannot be seen in a stack.

Use it as a context manager around the loop that calls :meth:`StallWatch.beat`.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_STACKS = 500  # a run that stalls all the time still keeps a bounded record


@dataclass(frozen=True, slots=True)
class Stall:
    """One stall: when the watcher saw it (monotonic), how late the loop was then, and
    the loop thread's innermost frames as ``file:line function``, outermost first."""

    at: float
    late_s: float
    stack: tuple[str, ...]


@dataclass(slots=True)
class StallWatch:
    """Watch the calling thread's loop; see the module docstring.

    Attributes:
        after_s: a beat older than this is a stall.
        period_s: how often the watcher looks.
        depth: frames kept per stack.
        stalls: what the watcher found, at most :data:`MAX_STACKS`.
        full_gc: ``(monotonic end, seconds)`` of each full collection.
    """

    after_s: float = 0.1
    period_s: float = 0.02
    depth: int = 8
    stalls: list[Stall] = field(default_factory=list)
    full_gc: list[tuple[float, float]] = field(default_factory=list)
    _beat: float = 0.0
    _seen: float = -1.0
    _gc_start: float = 0.0
    _thread_id: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def beat(self) -> None:
        """The loop is alive now."""
        self._beat = time.monotonic()

    def __enter__(self) -> StallWatch:
        self._thread_id = threading.get_ident()
        self.beat()
        gc.callbacks.append(self._on_gc)
        self._watcher = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif info.get("generation") == 2:
            self.full_gc.append((time.monotonic(), time.perf_counter() - self._gc_start))

    def _watch(self) -> None:
        while not self._stop.wait(self.period_s):
            beat = self._beat
            late = time.monotonic() - beat
            if late <= self.after_s or beat == self._seen or len(self.stalls) >= MAX_STACKS:
                continue
            frame = sys._current_frames().get(self._thread_id)
            if frame is None:
                continue
            self._seen = beat
            summary = traceback.extract_stack(frame)[-self.depth :]
            stack = tuple(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in summary)
            self.stalls.append(Stall(time.monotonic(), late, stack))

    def report(self, since: float, top: int = 5) -> dict[str, Any]:
        """The record as JSON: counts, the longest full collection, and the ``top``
        most frequent innermost frames with how often each was caught."""
        inner = Counter(s.stack[-1] for s in self.stalls if s.stack)
        return {
            "stalls_caught": len(self.stalls),
            "full_gc": len(self.full_gc),
            "full_gc_max_ms": 1000.0 * max((d for _, d in self.full_gc), default=0.0),
            "innermost": [{"frame": f, "count": n} for f, n in inner.most_common(top)],
            "stalls": [
                {
                    "at_s": round(s.at - since, 2),
                    "late_ms": round(1000 * s.late_s),
                    "stack": s.stack,
                }
                for s in self.stalls
            ],
        }


def _short(path: str) -> str:
    """``.../site-packages/aiortc/x.py`` -> ``aiortc/x.py``; project files from the package."""
    parts = path.replace("\\", "/").split("/")
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :])
    return "/".join(parts[-2:])
