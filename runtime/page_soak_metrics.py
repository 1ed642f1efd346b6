"""The kiosk soak's measures (``likeness bench soak --page kiosk``), as pure functions.

:mod:`runtime.page_soak` reads, every few seconds, what the kiosk page's own
``RTCPeerConnection.getStats()`` says and what its ``window.likeness`` hooks have
seen; everything here turns those readings into numbers, without a browser or a
network, so each measure is tested on synthetic readings built to fail it
(``tests/runtime/test_page_soak.py``).

- :func:`plan_questions`: when the fake microphone says each question.
- :func:`assign_events`: which page events (transcripts, states, replies) belong to
  which question.
- :func:`minute_rows` and :func:`verdict`: the per-minute table and the targets;
  :func:`minute_table`, :func:`progress_line` and :func:`target_table` show them.

The browser's counters belong to one peer connection and restart at zero on a new
one (a reconnect): a counter that went down is read as restarted (:func:`_delta`).
A freeze, to Chromium, is a frame shown more than max(3 frame times, one frame time
+ 150 ms) after the one before (190 ms at 25 fps; the aiortc soak's line is 200 ms).
It is counted when the late frame comes, so video that stops altogether is caught
apart: a reading with no new decoded frame counts as "video stopped".
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.soak_metrics import TARGET_RSS_GROWTH_PCT, cell, table_cells


@dataclass(frozen=True, slots=True)
class StatsSample:
    """One reading of the page and the server, on the soak's monotonic clock.

    Attributes:
        t: when it was read.
        session_id: the page's session (``likeness.sessionId``; "" before one).
        reconnects: connection attempts after the first (``likeness.reconnects``).
        frames_decoded, frames_dropped, freeze_count: inbound-rtp video counters.
        freezes_s: inbound-rtp video ``totalFreezesDuration``.
        fps: inbound-rtp video ``framesPerSecond`` (the browser's last second; NaN
            when it gave none).
        concealed, samples_received: inbound-rtp audio ``concealedSamples`` and
            ``totalSamplesReceived``.
        jitter_delay_s, jitter_emitted: inbound-rtp audio ``jitterBufferDelay`` and
            ``jitterBufferEmittedCount``.
        rss_mb: the server's resident memory (NaN: unknown, e.g. a server given by URL).
        tasks: the server's open asyncio tasks by ``/health`` (-1: unknown).
    """

    t: float
    session_id: str = ""
    reconnects: int = 0
    frames_decoded: int = 0
    frames_dropped: int = 0
    freeze_count: int = 0
    freezes_s: float = 0.0
    fps: float = math.nan
    concealed: int = 0
    samples_received: int = 0
    jitter_delay_s: float = 0.0
    jitter_emitted: int = 0
    rss_mb: float = math.nan
    tasks: int = -1

    @classmethod
    def from_page(cls, t: float, page: dict[str, Any], rss_mb: float, tasks: int) -> StatsSample:
        """A reading from :data:`runtime.page_soak.STATS_JS`'s answer (missing fields: 0)."""
        video, audio = page.get("video") or {}, page.get("audio") or {}

        def num(d: dict[str, Any], key: str, default: float = 0.0) -> float:
            value = d.get(key)
            return float(value) if isinstance(value, (int, float)) else default

        return cls(
            t=t,
            session_id=str(page.get("sessionId") or ""),
            reconnects=int(num(page, "reconnects")),
            frames_decoded=int(num(video, "framesDecoded")),
            frames_dropped=int(num(video, "framesDropped")),
            freeze_count=int(num(video, "freezeCount")),
            freezes_s=num(video, "totalFreezesDuration"),
            fps=num(video, "framesPerSecond", math.nan),
            concealed=int(num(audio, "concealedSamples")),
            samples_received=int(num(audio, "totalSamplesReceived")),
            jitter_delay_s=num(audio, "jitterBufferDelay"),
            jitter_emitted=int(num(audio, "jitterBufferEmittedCount")),
            rss_mb=rss_mb,
            tasks=tasks,
        )


@dataclass(slots=True)
class PageTurn:
    """One question of the fake microphone and what the page saw after it.

    Attributes:
        asked_at: when the microphone began saying it (soak clock).
        voice_end: when its last loud sample was said.
        text: the question.
        transcript: the first final transcript the page showed after it (None: none).
        transcript_at: when the page had it (to the event poll's resolution).
        speaking_at: when the page first saw the companion "speaking" after it
            (to the event poll's resolution; None: not answered).
        replies: reply sentences the page showed for it.
        interrupted: the reply was cut short by the next question (barge-in).
        server_ms: the server's ``metrics`` event for the turn (its own stamps).
    """

    asked_at: float
    voice_end: float
    text: str
    transcript: str | None = None
    transcript_at: float | None = None
    speaking_at: float | None = None
    replies: int = 0
    interrupted: bool = False
    server_ms: dict[str, float] | None = None

    @property
    def answered(self) -> bool:
        """The companion began a reply after this question and before the next one."""
        return self.speaking_at is not None


def plan_questions(
    seed: int,
    count: int,
    length_s: float,
    interval_s: tuple[float, float] = (20.0, 40.0),
    lead_s: float = 15.0,
    quiet_end_s: float = 20.0,
) -> list[tuple[float, int]]:
    """When the microphone says which question: ``(seconds from its start, index)``.

    The first at ``lead_s`` (the page connects meanwhile), then one every
    ``uniform(*interval_s)`` seconds (``random.Random(seed)``, the aiortc soak's rule),
    none later than ``length_s - quiet_end_s`` (its reply would be cut off); the
    questions in turn, from the first again after the last of ``count``.
    """
    rng = random.Random(seed)
    plan, at = [], lead_s
    while at <= length_s - quiet_end_s:
        plan.append((at, len(plan) % count))
        at += rng.uniform(*interval_s)
    return plan


def assign_events(turns: Sequence[PageTurn], events: Sequence[tuple[float, dict]]) -> None:
    """Fill each turn from the page events ``(seen at, event)`` between its start and
    the next turn's start; events before the first turn belong to none."""
    for k, turn in enumerate(turns):
        until = turns[k + 1].asked_at if k + 1 < len(turns) else math.inf
        turn.transcript, turn.transcript_at, turn.speaking_at, turn.replies = None, None, None, 0
        turn.interrupted, turn.server_ms = False, None
        for t, event in events:
            if not turn.asked_at <= t < until:
                continue
            kind = event.get("type")
            if kind == "transcript" and event.get("final") and turn.transcript is None:
                turn.transcript, turn.transcript_at = str(event.get("text") or ""), t
            elif kind == "state" and event.get("state") == "speaking" and turn.speaking_at is None:
                turn.speaking_at = t
            elif kind == "reply":
                turn.replies += 1
            elif kind == "interrupted":
                turn.interrupted = True
            elif kind == "metrics" and turn.server_ms is None:
                turn.server_ms = dict(event.get("stages_ms") or {})


def _delta(before: float, after: float) -> float:
    """A counter's growth; one that went down restarted (a new peer connection)."""
    return after - before if after >= before else after


def _sent_ms(turns: Sequence[PageTurn]) -> list[float]:
    """The server's "first audio sent" stamps of the turns that have one."""
    return [
        t.server_ms["first_audio_sent"] for t in turns if "first_audio_sent" in (t.server_ms or {})
    ]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def minute_rows(
    samples: Sequence[StatsSample], turns: Sequence[PageTurn], start: float, minutes: int
) -> list[dict[str, float]]:
    """One row per minute from ``start``: fps, freezes, audio concealment, turns, RSS, tasks.

    Each interval between two readings counts in the minute its middle falls in;
    a turn in the minute its question began; RSS is the minute's last reading and
    tasks its fewest (between replies: a leak raises this floor).
    """
    rows = []
    pairs = list(zip(samples, samples[1:], strict=False))
    for m in range(minutes):
        a, b = start + 60 * m, start + 60 * (m + 1)
        inside = [(p, q) for p, q in pairs if a <= (p.t + q.t) / 2 < b]
        span = sum(q.t - p.t for p, q in inside)
        decoded = sum(_delta(p.frames_decoded, q.frames_decoded) for p, q in inside)
        received = sum(_delta(p.samples_received, q.samples_received) for p, q in inside)
        concealed = sum(_delta(p.concealed, q.concealed) for p, q in inside)
        emitted = sum(_delta(p.jitter_emitted, q.jitter_emitted) for p, q in inside)
        delay = sum(_delta(p.jitter_delay_s, q.jitter_delay_s) for p, q in inside)
        read = [s for s in samples if a <= s.t < b]
        asked = [t for t in turns if a <= t.asked_at < b]
        sent = [
            t.server_ms["first_audio_sent"]
            for t in asked
            if "first_audio_sent" in (t.server_ms or {})
        ]
        rows.append(
            {
                "minute": m + 1,
                "fps": decoded / span if span > 0 else math.nan,
                "fps_low": min((s.fps for s in read if s.fps == s.fps), default=math.nan),
                "freezes": int(sum(_delta(p.freeze_count, q.freeze_count) for p, q in inside)),
                "freeze_ms": 1000 * sum(_delta(p.freezes_s, q.freezes_s) for p, q in inside),
                "video_stopped_s": sum(
                    q.t - p.t for p, q in inside if _delta(p.frames_decoded, q.frames_decoded) == 0
                ),
                "frames_dropped": int(
                    sum(_delta(p.frames_dropped, q.frames_dropped) for p, q in inside)
                ),
                "concealed_pct": 100 * concealed / received if received > 0 else math.nan,
                "jitter_buffer_ms": 1000 * delay / emitted if emitted > 0 else math.nan,
                "turns": len(asked),
                "answered": sum(1 for t in asked if t.answered),
                "server_sent_p50_ms": _median(sent),
                "reconnects": read[-1].reconnects if read else -1,
                "rss_mb": read[-1].rss_mb if read else math.nan,
                "tasks": min((s.tasks for s in read if s.tasks >= 0), default=-1),
            }
        )
    return rows


def verdict(
    samples: Sequence[StatsSample],
    rows: Sequence[dict[str, float]],
    turns: Sequence[PageTurn],
    ended: str = "",
) -> dict[str, Any]:
    """The run's summary figures and each target: True (met), False, or None (the run
    was too short or gave too little to judge it).

    - the session lasted: one session id throughout, no reconnect, and the server
      did not end it (``ended``: its reason, "" if it did not).
    - no freezes: the browser counted none, and the video never stopped.
    - RSS growth: the last reading against the last of minute 1 (the warm-up),
      within :data:`~runtime.soak_metrics.TARGET_RSS_GROWTH_PCT`.
    - every question answered: each began a reply before the next question.
    """
    sessions = sorted({s.session_id for s in samples if s.session_id})
    reconnects = max((s.reconnects for s in samples), default=0)
    start = samples[0].t if samples else math.nan
    warm = [s for s in samples if s.t < start + 60]
    base = warm[-1].rss_mb if warm and len(rows) >= 2 else math.nan
    end_rss = samples[-1].rss_mb if samples else math.nan
    growth = 100.0 * (end_rss - base) / base if base == base and base > 0 else math.nan
    answered = [t for t in turns if t.answered]
    sent = [
        t.server_ms["first_audio_sent"] for t in turns if "first_audio_sent" in (t.server_ms or {})
    ]
    stopped = sum(r["video_stopped_s"] for r in rows)
    received = sum(_delta(p.samples_received, q.samples_received) for p, q in _pairs(samples))
    concealed = sum(_delta(p.concealed, q.concealed) for p, q in _pairs(samples))
    summary = {
        "minutes": len(rows),
        "session_ended_early": ended,
        "sessions": len(sessions),
        "session_id": sessions[0] if len(sessions) == 1 else ",".join(sessions),
        "reconnects": reconnects,
        "fps_min": min((r["fps"] for r in rows), default=math.nan),
        "fps_mean": _mean([r["fps"] for r in rows]),
        "freezes": int(sum(r["freezes"] for r in rows)),
        "freeze_ms": sum(r["freeze_ms"] for r in rows),
        "video_stopped_s": stopped,
        "frames_dropped": int(sum(r["frames_dropped"] for r in rows)),
        "concealed_pct": 100 * concealed / received if received > 0 else math.nan,
        "rss_warm_mb": base,
        "rss_end_mb": end_rss,
        "rss_growth_pct": growth,
        "tasks_warm": rows[0]["tasks"] if rows else -1,
        "tasks_end": rows[-1]["tasks"] if rows else -1,
        "turns": len(turns),
        "turns_answered": len(answered),
        "turns_transcribed": sum(1 for t in turns if t.transcript),
        "turns_interrupted": sum(1 for t in turns if t.interrupted),
        "server_sent_p50_ms": _median(sent),
    }
    checks: dict[str, bool | None] = {
        "session_lasted": not ended and len(sessions) == 1 and reconnects == 0,
        "no_freezes": summary["freezes"] == 0 and stopped == 0 if rows else None,
        "rss_flat": None if math.isnan(growth) else growth <= TARGET_RSS_GROWTH_PCT,
        "all_answered": len(answered) == len(turns) if turns else None,
    }
    return {"summary": summary, "targets": checks}


def _pairs(samples: Sequence[StatsSample]) -> list[tuple[StatsSample, StatsSample]]:
    return list(zip(samples, samples[1:], strict=False))


def _mean(values: Sequence[float]) -> float:
    known = [v for v in values if v == v]
    return sum(known) / len(known) if known else math.nan


MINUTE_COLUMNS = [
    "min",
    "fps",
    "fps low",
    "freezes",
    "freeze ms",
    "stopped s",
    "dropped",
    "concealed %",
    "jitter buf ms",
    "turns",
    "answered",
    "server sent p50 ms",
    "RSS MB",
    "tasks",
]


def minute_table(rows: list[dict[str, float]]) -> list[list[str]]:
    """The per-minute rows as table cells (columns: :data:`MINUTE_COLUMNS`)."""
    keys = (
        ("minute", 0),
        ("fps", 1),
        ("fps_low", 0),
        ("freezes", 0),
        ("freeze_ms", 0),
        ("video_stopped_s", 0),
        ("frames_dropped", 0),
        ("concealed_pct", 1),
        ("jitter_buffer_ms", 0),
        ("turns", 0),
        ("answered", 0),
        ("server_sent_p50_ms", 0),
        ("rss_mb", 0),
        ("tasks", 0),
    )
    return table_cells(rows, keys)


def progress_line(row: dict[str, float], minutes: int) -> str:
    """One line per finished minute, for the terminal."""
    return (
        f"minute {row['minute']}/{minutes}: {row['fps']:.1f} fps, {row['freezes']} freezes "
        f"({cell(row['freeze_ms'])} ms), audio concealed {cell(row['concealed_pct'], 1)} %, "
        f"{row['turns']} questions, {row['answered']} answered so far, "
        f"RSS {cell(row['rss_mb'])} MB, {row['tasks']} tasks"
    )


def target_table(result: dict[str, Any]) -> list[list[str]]:
    """One row per target: what was asked, what was measured, pass / fail / n/a."""
    m = result["metrics"]
    lasted = f"{m['sessions']} session(s), {m['reconnects']} reconnects" + (
        f", ended: {m['session_ended_early']}" if m["session_ended_early"] else ""
    )
    return [
        ["session lasted", "1 session, 0 reconnects", lasted, m["target_session_lasted"]],
        [
            "no freezes (getStats)",
            "0",
            f"{m['freezes']} ({m['freeze_ms']:.0f} ms), stopped {m['video_stopped_s']:.0f} s",
            m["target_no_freezes"],
        ],
        [
            "RSS growth after minute 1",
            f"<= {TARGET_RSS_GROWTH_PCT:.0f} %",
            f"{cell(m['rss_growth_pct'], 1)} %",
            m["target_rss_flat"],
        ],
        [
            "every question answered",
            "all",
            f"{m['turns_answered']} of {m['turns']}",
            m["target_all_answered"],
        ],
    ]
