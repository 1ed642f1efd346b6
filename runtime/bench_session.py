"""``likeness bench session``: N concurrent WebRTC sessions against a real server.

Each client (aiortc, :mod:`runtime.rtc_client`) asks a spoken question, lets the
companion answer, and records the per-stage latencies the server reports, the
video frame rate it receives and the server's dropped frames. The server is a
``likeness serve`` process of its own (or ``--url``), so CPU and memory are the
server's, read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from runtime.rtc_client import CompanionClient
from voice.audio import read_audio
from voice.types import AudioChunk

QUESTION = "Hello! Could you tell me something nice about the weather today?"
TARGET_FPS = 20.0
TARGET_P95_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB, from /proc (NaN when unreadable)."""
    try:
        return _rss_mb(pid)
    except OSError:
        return float("nan")


@contextlib.contextmanager
def serve(sessions: int, data_dir: Path, env: dict[str, str] | None = None, nice: int = 0):
    """Start a fresh ``likeness serve`` for ``sessions`` sessions; yields (url, pid).

    It runs on defaults with its own data dir (no ``LIKENESS_*`` variable of the caller
    reaches it) plus ``env`` (``LIKENESS_...`` settings); it logs to
    ``data_dir/server.log`` and is stopped on exit. ``nice`` (0-19) lowers its CPU
    priority below the caller's, so that a client on the same cores is not starved by it.
    """
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be 0-19, got {nice}")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")} | {
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_SERVER__MAX_SESSIONS": str(sessions),
        "LIKENESS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    log = open(data_dir / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509 - no threads yet
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: " + (data_dir / "server.log").read_text())
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def _one(url: str, speech: AudioChunk, listen_s: float) -> dict[str, Any]:
    async with CompanionClient(url, keep_video=False) as client:
        await client.wait_for("state", 15, state="listening")
        client.mic.say(speech.pcm, speech.sample_rate)
        try:
            metrics = await client.wait_for("metrics", 60)
        except TimeoutError:
            metrics = {}
        await asyncio.sleep(listen_s)
        video = [t for t, _ in client.got.video]
    window = [t for t in video if t >= video[-1] - listen_s] if video else []
    fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
    return {
        "stages_ms": metrics.get("stages_ms", {}),
        "dropped": metrics.get("video", {}).get("dropped_stale", 0),
        "fps": fps,
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _round(url: str, pid: int, n: int, speech: AudioChunk, listen_s: float) -> dict:
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    results = await asyncio.gather(*[_one(url, speech, listen_s) for _ in range(n)])
    cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    stages: dict[str, list[float]] = {}
    for r in results:
        for stage, ms in r["stages_ms"].items():
            stages.setdefault(stage, []).append(ms)
    fps = [r["fps"] for r in results]
    row: dict[str, Any] = {
        "sessions": n,
        "fps_min": min(fps),
        "fps_median": statistics.median(fps),
        "dropped_frames": sum(r["dropped"] for r in results),
        "cpu_cores_per_session": cpu / n,
        "rss_mb": _rss_mb(pid),
        "turns_answered": sum(1 for r in results if r["stages_ms"]),
    }
    for stage, values in stages.items():
        row[f"{stage}_p50_ms"] = _percentile(values, 50)
        row[f"{stage}_p95_ms"] = _percentile(values, 95)
    key = "first_audio_sent_p95_ms"
    row["ok"] = (
        row["turns_answered"] == n
        and row["fps_min"] >= TARGET_FPS
        and row.get(key, float("inf")) <= TARGET_P95_S * 1000
    )
    return row


def bench_session(
    sessions: int, sweep: bool = False, listen_s: float = 6.0, url: str | None = None
) -> dict[str, Any]:
    """Run ``sessions`` concurrent sessions (or 1, 2, 4, ... up to it with ``sweep``)."""
    from runtime.bench import machine_info

    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as tmp:
        data = Path(tmp)
        wav = data / "question.wav"
        subprocess.run(
            [sys.executable, "-m", "runtime", "say", QUESTION, "-o", str(wav)],
            check=True,
            capture_output=True,
            env={**os.environ, "LIKENESS_DATA_DIR": str(data)},
        )
        speech = read_audio(wav, sample_rate=None)
        counts = (
            [n for n in (1, 2, 4, 8, 16, 32) if n < sessions] + [sessions] if sweep else [sessions]
        )
        rows = []
        with (
            serve(max(counts), data) if url is None else contextlib.nullcontext((url, None)) as (
                base,
                pid,
            )
        ):
            for n in counts:
                row = asyncio.run(_round(base, pid or os.getpid(), n, speech, listen_s))
                rows.append(row)
                if sweep and not row["ok"]:
                    break
    best = max((r["sessions"] for r in rows if r["ok"]), default=0)
    last = rows[-1]
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    metrics["largest_ok_sessions"] = best
    return {
        "bench": "session",
        "machine": machine_info(),
        "config": {"targets": {"fps": TARGET_FPS, "voice_end_to_first_audio_p95_s": TARGET_P95_S}},
        "metrics": metrics,
        "runs": rows,
    }
