"""Who used the machine's CPU: the server, this process, everything else, the hypervisor.

A long benchmark on a shared machine needs to tell its own slow minutes from the
machine's: :class:`CpuMeter` reads ``/proc/stat`` (every core's busy and stolen time)
and ``/proc/PID/stat`` (one process's own time, with its waited-for children), and says,
between two reads, how many cores each used on average. "Other" is what neither the
watched process nor this one used: another program, or a build, on the same cores.
"Steal" is time the hypervisor gave this virtual machine's cores to another guest.
Linux only; on a system without ``/proc`` every figure is NaN.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Average cores in use between two reads (1.0: one core all the time).

    Attributes:
        process: the watched process (its threads and waited-for children).
        own: this process.
        other: every other program on the machine.
        steal: taken by the hypervisor for other guests.
    """

    process: float
    own: float
    other: float
    steal: float


def _machine() -> tuple[float, float]:
    """Busy and stolen CPU seconds of all cores since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def _process(pid: int) -> float:
    """CPU seconds of process ``pid`` and its waited-for children."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces: count from the closing parenthesis.
        after = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in after[11:15]) / _TICK


def _own() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Cores used by a process, by this one and by the rest, between calls of :meth:`read`.

    Args:
        pid: the process to watch (for example the server under test); None: none.
    """

    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._last = self._now()

    def _now(self) -> tuple[float, float, float, float, float] | None:
        try:
            busy, steal = _machine()
            proc = _process(self._pid) if self._pid else 0.0
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, steal, proc, _own()

    def read(self) -> CpuUse:
        """Average use since the previous read (or since the meter was made)."""
        now, last = self._now(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return CpuUse(math.nan, math.nan, math.nan, math.nan)
        wall = now[0] - last[0]
        busy, steal, proc, own = ((now[i] - last[i]) / wall for i in range(1, 5))
        # Per-process times and the machine's are read a moment apart: never below 0.
        return CpuUse(proc, own, max(busy - proc - own, 0.0), steal)
