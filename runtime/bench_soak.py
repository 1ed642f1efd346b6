"""``likeness bench soak``: one long live session, measured minute by minute.

A fresh ``likeness serve`` (or ``url``) and one scripted aiortc client
(:mod:`runtime.rtc_client`) that keeps its microphone open and asks a question
(:mod:`runtime.soak_client`: varied, seeded) every 20-40 s, waiting while a reply
plays. From what the client receives it measures, per minute: video fps, freezes,
audio gaps during replies, the A/V offset (mouth against voice), turn latency at the
client and as the server reports it, and the server's RSS and asyncio tasks
(:mod:`runtime.soak_metrics` holds the measures and the targets).

The client's ICE set-up and the server's URL are parameters (:class:`SoakOptions`),
so the same run can go through a TURN relay or a NAT.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCConfiguration

from runtime.bench_session import rss_mb, serve
from runtime.cpu_use import CpuMeter
from runtime.memory import freeze_heap
from runtime.rtc_client import CompanionClient
from runtime.soak_client import (
    FRAME_S,
    LEVEL,
    MouthProbe,
    Question,
    generator_lead,
    load_voices,
    make_questions,
)
from runtime.soak_metrics import (
    FREEZE_S,
    TARGET_AV_MS,
    TARGET_RSS_GROWTH_PCT,
    TARGET_TREND,
    Received,
    TurnRecord,
    av_lag,
    cell,
    last_minute_row,
    minute_rows,
    table_cells,
    verdict,
    video_gaps,
)
from runtime.stall_watch import StallWatch

SAMPLE_S = 5.0  # server RSS and tasks are read this often
FIRST_QUESTION_S = 5.0  # after the first video frame
QUIET_END_S = 20.0  # no question this close to the end: its reply would be cut off
SETTLE_S = 2.0  # gaps in the session's first seconds are set-up, reported apart
MIN_REPLY_S = 1.5  # shorter replies give no A/V figure


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """One soak run.

    Attributes:
        minutes: length of the measured session.
        seed: question order, voices and the gaps between questions.
        interval_s: a question every ``uniform(*interval_s)`` seconds (later while
            a reply is still playing).
        url: a running server to use instead of starting a fresh one (then no RSS).
        rtc: the client's ICE set-up; None means no ICE servers (host candidates).
        server_env: ``LIKENESS_*`` settings for the fresh server.
        server_nice: the fresh server's CPU priority below the client's (0-19). On one
            machine the client stands in for the person's own device: with the server
            nicer, the client's stalls stop counting as freezes, while the server's own
            media still competes with its own models, as on a server of its own.
    """

    minutes: int
    seed: int = 0
    interval_s: tuple[float, float] = (20.0, 40.0)
    url: str | None = None
    rtc: RTCConfiguration | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    server_nice: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.server_nice <= 19:
            raise ValueError(f"server_nice must be 0-19, got {self.server_nice}")
        if self.minutes < 1:
            raise ValueError(f"minutes must be at least 1, got {self.minutes}")
        low, high = self.interval_s
        if not 5.0 <= low <= high:
            raise ValueError(f"interval_s must be (low, high) with 5 <= low <= high: {low, high}")


MinuteHook = Callable[[dict[str, float]], None]


class _Script:
    """The scripted client's record: questions asked, and the turns derived from them."""

    def __init__(self, client: CompanionClient, rec: Received) -> None:
        self.client, self.rec = client, rec
        self.asked: list[tuple[float, Question]] = []
        self.delayed = 0  # questions that waited for a reply to finish
        self._done: dict[int, TurnRecord] = {}  # turns whose reply has ended

    def listening_for(self) -> float:
        """Seconds since the companion went back to listening (-1: it is not)."""
        for t, event in reversed(self.client.got.events):  # heartbeats come twice a second
            if event.get("type") == "state":
                return time.monotonic() - t if event.get("state") == "listening" else -1.0
        return -1.0

    def ended(self) -> str:
        """The server's reason if it ended the session ("" while it is live)."""
        for _, event in reversed(self.client.got.events):
            if event.get("type") == "state":
                return str(event.get("reason") or "ended") if event["state"] == "ended" else ""
        return ""

    def ask(self, question: Question) -> None:
        self.client.mic.say(question.pcm, question.sample_rate)
        self.asked.append((time.monotonic(), question))

    def update(self) -> None:
        """Bring ``rec`` up to date with what has arrived (cheap to call every minute)."""
        got, rec = self.client.got, self.rec
        new = got.audio_rms[len(rec.audio_t) :]  # only what came since: an hour is 180 000
        rec.audio_t.extend(t for t, _ in new)
        rec.envelope.extend(r for _, r in new)
        rec.audio_net_t.extend(got.audio_arrived[len(rec.audio_net_t) :])
        rec.video_net_t.extend(got.video_arrived[len(rec.video_net_t) :])
        ends = list(self.client.mic.speech_ends)
        turns = []
        for k, (asked, q) in enumerate(self.asked):
            turns.append(self._done.get(k) or self._turn(k, asked, q, ends))
        rec.turns = turns

    def _turn(self, k: int, asked: float, q: Question, ends: list[float]) -> TurnRecord:
        got, rec = self.client.got, self.rec
        until = self.asked[k + 1][0] if k + 1 < len(self.asked) else math.inf
        clip_s = len(q.pcm) / q.sample_rate
        # The mic stamps the moment its last 20 ms frame of the clip left.
        end = next((e for e in ends if e >= asked), None)
        voice_end = asked + q.voice_end_s if end is None else end + FRAME_S - clip_s + q.voice_end_s
        turn = TurnRecord(asked_at=asked, voice_end=voice_end)
        later = got.audio_rms[bisect.bisect_right(rec.audio_t, voice_end) :]  # not the whole run
        turn.first_audio_at = next((t for t, r in later if t < until and r > LEVEL), None)
        events = [(t, e) for t, e in got.events if voice_end < t < until]
        turn.stages_ms = next((e["stages_ms"] for _, e in events if e.get("type") == "metrics"), {})
        states = [(t, e["state"]) for t, e in events if e.get("type") == "state"]
        start = next((t for t, s in states if s == "speaking"), None)
        stop = next((t for t, s in states if start and t > start and s != "speaking"), None)
        if start is not None and stop is not None:
            turn.reply = (start, stop)
            if stop - start >= MIN_REPLY_S:
                turn.av = av_lag(*_net_signals(rec), (start, stop))
            self._done[k] = turn
        return turn


def _net_signals(rec: Received) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(audio times, envelope, video times, mouth)`` at packet arrival, as a browser's
    receivers get them (delivery times where the client stamped none)."""
    audio = rec.audio_net_t if len(rec.audio_net_t) == len(rec.envelope) else rec.audio_t
    video = rec.video_net_t if len(rec.video_net_t) == len(rec.mouth) else rec.video_t
    return audio, rec.envelope, video, rec.mouth


async def _sample(url: str, pid: int | None, rec: Received) -> None:
    """Read the server's RSS (/proc), open tasks (/health) and the CPU that other
    programs used every :data:`SAMPLE_S`."""
    meter = CpuMeter(pid)
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            tasks = -1
            with contextlib.suppress(httpx.HTTPError, ValueError, TypeError):
                tasks = int((await http.get(f"{url}/health")).json().get("tasks", -1))
            now = time.monotonic()
            rec.samples.append((now, rss_mb(pid) if pid else math.nan, tasks))
            use = meter.read()
            rec.cpu.append((now, use.other, use.steal))
            await asyncio.sleep(SAMPLE_S)


async def _session(
    opts: SoakOptions,
    url: str,
    pid: int | None,
    questions: list[Question],
    rec: Received,
    on_minute: MinuteHook,
) -> tuple[_Script, dict[str, Any]]:
    probe = MouthProbe()

    def on_video(t: float, frame: Any) -> None:
        rec.video_t.append(t)
        timed = frame.pts is not None and frame.time_base is not None
        rec.video_pts.append(float(frame.pts * frame.time_base) if timed else t)
        rec.mouth.append(probe.of_frame(frame))

    rng = random.Random(opts.seed)
    config = opts.rtc or RTCConfiguration(iceServers=[])
    async with CompanionClient(
        url, keep_video=False, configuration=config, on_video=on_video, stamp_arrivals=True
    ) as client:
        await client.wait_for("state", 30, state="listening")
        deadline = time.monotonic() + 30
        while not rec.video_t:
            if time.monotonic() > deadline:
                raise RuntimeError("no video frame within 30 s of the session's start")
            await asyncio.sleep(0.02)
        rec.start = rec.video_t[0]
        end = rec.start + 60 * opts.minutes
        freeze_heap()  # the client's loop is the "person's device": no 110 ms GC walks
        script = _Script(client, rec)
        sampler = asyncio.create_task(_sample(url, pid, rec))
        # a beat 150 ms old: the 50 ms sleep overslept by 100 ms, as rec.stalls counts
        with StallWatch(after_s=0.15, full_gc=rec.full_gc) as watch:
            try:
                next_at, minute, waiting = rec.start + FIRST_QUESTION_S, 0, False
                while (now := time.monotonic()) < end and not rec.ended:
                    watch.beat()
                    if now >= rec.start + 60 * (minute + 1):
                        minute += 1
                        script.update()
                        on_minute(last_minute_row(rec, minute, SETTLE_S))
                        freeze_heap()  # the minute's records stay to the end: out of GC's walk
                    if next_at <= now < end - QUIET_END_S:
                        if script.listening_for() >= 1.0:
                            script.ask(questions[len(script.asked) % len(questions)])
                            next_at, waiting = now + rng.uniform(*opts.interval_s), False
                        elif not waiting:
                            script.delayed, waiting = script.delayed + 1, True
                    rec.ended = script.ended()
                    await asyncio.sleep(0.05)
                    if (late := time.monotonic() - now - 0.05) > 0.1:
                        rec.stalls.append((now, late))
            finally:
                rec.end = end
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
        script.update()
        rows = minute_rows(rec, opts.minutes, SETTLE_S)
        for row in rows[minute:]:
            on_minute(row)
    return script, watch.report(rec.start)


def bench_soak(opts: SoakOptions, on_minute: MinuteHook | None = None) -> dict[str, Any]:
    """Run one soak; returns ``{"bench", "machine", "config", "metrics", "runs"}``.

    ``on_minute`` gets each minute's row as soon as the minute is over (progress).
    ``metrics`` holds the summary and one ``target_*`` entry per target:
    "pass", "fail" or "n/a" (the run was too short to judge it).

    Raises:
        RuntimeError: the server did not start, or sent no video.
    """
    from runtime.bench import machine_info

    voices = load_voices()
    questions = make_questions(opts.seed, voices)
    bias = generator_lead(voices[0][1])
    rec = Received(start=math.nan, av_bias_s=0.0 if math.isnan(bias) else bias)
    with tempfile.TemporaryDirectory(prefix="likeness-soak-") as tmp:
        server = (
            serve(1, Path(tmp), env=opts.server_env, nice=opts.server_nice)
            if opts.url is None
            else contextlib.nullcontext((opts.url, None))
        )
        with server as (url, pid):
            hook = on_minute or (lambda _row: None)
            script, stalls = asyncio.run(_session(opts, url, pid, questions, rec, hook))
        log = Path(tmp) / "server.log"
        server_log = log.read_text().splitlines()[-20:] if rec.ended and log.is_file() else []
    rows = minute_rows(rec, opts.minutes, SETTLE_S)
    metrics = flat_metrics(verdict(rec, rows, SETTLE_S), script.delayed)
    return {
        "bench": "soak",
        "machine": machine_info(),
        "config": {
            "minutes": opts.minutes,
            "seed": opts.seed,
            "interval_s": list(opts.interval_s),
            "server": opts.url or "fresh likeness serve (defaults)",
            "server_env": opts.server_env,
            "server_nice": opts.server_nice,
            "ice_servers": len((opts.rtc.iceServers or []) if opts.rtc else []),
            "voices": sorted({q.voice for q in questions}),
            "targets": {
                "freeze_ms": 1000 * FREEZE_S,
                "freezes": 0,
                "av_offset_ms": TARGET_AV_MS,
                "rss_growth_pct": TARGET_RSS_GROWTH_PCT,
                "turn_trend": TARGET_TREND,
            },
        },
        "metrics": metrics,
        "runs": {
            "server_log_tail": server_log,
            "client_stalls": stalls,
            "freezes": [  # each one, to set beside the stalls and the turns
                {"at_s": round(g.start - rec.start, 2), "ms": round(1000 * g.length)}
                for g in video_gaps(rec, FREEZE_S)
            ],
            "minutes": rows,
            "turns": [
                _turn_json(t, rec, q) for t, (_, q) in zip(rec.turns, script.asked, strict=True)
            ],
        },
    }


def flat_metrics(judged: dict[str, Any], delayed: int) -> dict[str, Any]:
    """The summary of :func:`~runtime.soak_metrics.verdict` as the bench's flat
    ``metrics``: each target as ``target_<name>`` = "pass", "fail" or "n/a"."""
    word = {True: "pass", False: "fail", None: "n/a"}
    metrics: dict[str, Any] = {**judged["summary"], "questions_delayed": delayed}
    return metrics | {f"target_{k}": word[v] for k, v in judged["targets"].items()}


def _turn_json(turn: TurnRecord, rec: Received, question: Question) -> dict[str, Any]:
    out = {
        "at_s": round(turn.asked_at - rec.start, 2),
        "question": question.text,
        "voice": question.voice,
        "client_ms": turn.latency_ms,
        "server_ms": turn.stages_ms,
        "reply_s": None if turn.reply is None else round(turn.reply[1] - turn.reply[0], 2),
    }
    if turn.av is not None:
        out["av"] = asdict(turn.av) | {"offset_ms": 1000 * (turn.av.lag_s - rec.av_bias_s)}
    return out


MINUTE_COLUMNS = [
    "min",
    "fps",
    "freezes",
    "at sender",
    "max gap ms",
    "audio gaps",
    "client stall ms",
    "client GC ms",
    "A/V ms",
    "turns",
    "turn p50 ms",
    "turn p95 ms",
    "server sent p50 ms",
    "RSS MB",
    "tasks",
    "other CPU",
    "steal",
]


def minute_table(rows: list[dict[str, float]]) -> list[list[str]]:
    """The per-minute rows as table cells (columns: :data:`MINUTE_COLUMNS`)."""
    keys = (
        ("minute", 0),
        ("fps", 1),
        ("freezes", 0),
        ("freezes_at_sender", 0),
        ("max_gap_ms", 0),
        ("audio_gaps", 0),
        ("client_stall_ms", 0),
        ("client_gc_ms", 0),
        ("av_offset_ms", 0),
        ("turns", 0),
        ("turn_p50_ms", 0),
        ("turn_p95_ms", 0),
        ("server_first_audio_sent_p50_ms", 0),
        ("rss_mb", 0),
        ("tasks", 0),
        ("other_cpu", 2),
        ("steal_cpu", 2),
    )
    return table_cells(rows, keys)


def progress_line(row: dict[str, float], minutes: int) -> str:
    """One line per finished minute, for the terminal."""
    return (
        f"minute {row['minute']}/{minutes}: {row['fps']:.1f} fps, {row['freezes']} freezes "
        f"({row['freezes_at_sender']} at the sender, max gap {cell(row['max_gap_ms'])} ms), "
        f"{row['audio_gaps']} audio gaps, "
        f"A/V {cell(row['av_offset_ms'])} ms, {row['turns']} turns "
        f"p50 {cell(row['turn_p50_ms'])} ms, RSS {cell(row['rss_mb'])} MB, "
        f"{row['tasks']} tasks, other programs {cell(row['other_cpu'], 2)} cores"
    )


def target_table(result: dict[str, Any]) -> list[list[str]]:
    """One row per target: what was asked, what was measured, pass / fail / n/a."""
    m = result["metrics"]
    return [
        [
            "session lasted",
            "to the end",
            m["session_ended_early"] or "to the end",
            m["target_session_lasted"],
        ],
        ["no freezes (>200 ms)", "0", str(m["freezes"]), m["target_no_freezes"]],
        [
            "A/V offset start / end",
            f"<= {TARGET_AV_MS:.0f} ms",
            f"{cell(m['av_offset_start_ms'])} / {cell(m['av_offset_end_ms'])} ms",
            m["target_av_in_sync"],
        ],
        [
            "RSS growth after minute 1",
            f"<= {TARGET_RSS_GROWTH_PCT:.0f} %",
            f"{cell(m['rss_growth_pct'], 1)} %",
            m["target_rss_flat"],
        ],
        [
            "turn latency, late / early",
            f"<= x{TARGET_TREND}",
            f"x{cell(m['turn_trend'], 2)} ({cell(m['turn_late_ms'])} / "
            f"{cell(m['turn_early_ms'])} ms)",
            m["target_turns_flat"],
        ],
    ]
