"""runtime.cpu_use: the cores a watched process, this one and the rest of the machine used."""

from __future__ import annotations

import subprocess
import sys
import time

from runtime.cpu_use import CpuMeter

SPIN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}: pass\n"


def _spin(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)])


def test_the_watched_process_and_the_others_are_told_apart():
    """Two programs spin for 1.5 s: the watched one counts as the process, the other as
    "other"; this process sleeps. Measured with two training runs busy on the same 2
    cores (five runs): the watched one 0.43-0.52 cores, "other" 1.48-1.55 (the stranger
    and the training runs), this process 0.0."""
    watched, stranger = _spin(1.5), _spin(1.5)
    meter = CpuMeter(watched.pid)
    time.sleep(1.2)
    use = meter.read()
    watched.wait(), stranger.wait()
    assert use.process > 0.3, use
    assert use.other > 0.3, use
    assert use.own < 0.2, use
    assert use.steal >= 0.0


def test_a_process_that_is_gone_reads_as_unknown():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    meter = CpuMeter(gone.pid)
    use = meter.read()
    assert use.process != use.process  # NaN: not a made-up zero
