"""``likeness bench turns``: turn latency by turn index, measured at the client.

A fresh ``likeness serve`` (or ``--url``) and one aiortc client
(:mod:`runtime.rtc_client`) that keeps its microphone open and asks ``turns``
different spoken questions (Piper), one after the other: each question waits until
the previous reply has been heard. For every turn it records, at the client, the
time from the end of the question's audio to the first reply audio received, and
the server's own stage stamps (transcript, first token, first TTS audio, first
video / audio sent, all after the server detected the end of the turn). With
``runs`` > 1 each run starts a fresh server, and the report gives the p50 per turn
index, so the first turn of a fresh server is compared with the later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bench_session import serve
from runtime.rtc_client import CompanionClient
from voice.types import AudioChunk

TARGET_S = 1.2  # end of speech → first reply audio at the client, p50 of every turn
QUESTIONS = (
    "Hello! How are you today?",
    "What is your name?",
    "Can you tell me something nice about the weather?",
    "What should I cook for dinner tonight?",
    "Do you like music?",
    "Tell me a short story about a cat.",
    "What is a good way to relax in the evening?",
    "How far away is the moon?",
    "What games can we play together?",
    "Can you remind me to drink some water?",
    "What is your favourite season, and why?",
    "Thank you. What should we talk about next?",
    "Do you know any good jokes?",
    "What did I ask you first?",
    "Is it a good idea to take a walk after lunch?",
    "Good night, and thank you for the talk.",
)
_AUDIBLE_RMS = 0.01  # received audio louder than this is the companion speaking
_QUIET_S = 2.5  # a reply is over once the received audio stayed quiet this long (a loaded
# 2-core machine may take over a second to write the next sentence: 1.2 s cut replies)


async def synthesize(texts: tuple[str, ...]) -> list[AudioChunk]:
    """The questions as speech (the embedded Piper voice, one chunk each)."""
    from voice.tts.registry import load_tts

    tts = await asyncio.to_thread(load_tts, "piper", None)
    spoken = []
    for text in texts:
        parts = [chunk async for chunk in tts.synthesize(text)]
        pcm = np.concatenate([p.pcm for p in parts]).astype(np.float32)
        spoken.append(AudioChunk(pcm=pcm, sample_rate=parts[0].sample_rate, pts=0.0))
    return spoken


def _first_audible(client: CompanionClient, after: float) -> float | None:
    for t, rms in client.got.audio_rms:
        if t > after and rms > _AUDIBLE_RMS:
            return t
    return None


def _heard_at(client: CompanionClient, since: float) -> float | None:
    """When the server's ``transcript`` event of the turn asked at ``since`` arrived.

    Reply audio is counted only after it: a reply still playing when the next question
    ends is cut there (barge-in), so later audio belongs to the new reply.
    """
    for t, event in client.got.events:
        if t > since and event.get("type") == "transcript":
            return t
    return None


async def _until_quiet(client: CompanionClient, since: float, within_s: float) -> None:
    """Wait until the received audio was quiet for ``_QUIET_S`` (the reply ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        loud = [t for t, rms in client.got.audio_rms if t > since and rms > _AUDIBLE_RMS]
        last = loud[-1] if loud else since
        if time.monotonic() - last > _QUIET_S:
            return
        await asyncio.sleep(0.05)


async def converse(
    url: str, questions: list[AudioChunk], pause_s: float = 1.0, reply_timeout_s: float = 40.0
) -> list[dict[str, Any]]:
    """One session asking every question in turn; one row per question."""
    rows: list[dict[str, Any]] = []
    async with CompanionClient(url, keep_video=False) as client:
        await client.wait_for("state", 20, state="listening")
        await asyncio.sleep(0.5)
        for index, speech in enumerate(questions, start=1):
            metrics_seen = len(client.got.of_type("metrics"))
            ends_seen = len(client.mic.speech_ends)
            asked = time.monotonic()
            client.mic.say(speech.pcm, speech.sample_rate)
            deadline = asked + reply_timeout_s
            heard = spoke_until = None
            while time.monotonic() < deadline:  # the server's stamps, then the audio itself
                replied = len(client.got.of_type("metrics")) > metrics_seen
                understood = _heard_at(client, asked)
                if len(client.mic.speech_ends) > ends_seen and understood is not None:
                    spoke_until = client.mic.speech_ends[ends_seen]
                    heard = _first_audible(client, max(spoke_until, understood))
                if replied and heard is not None:
                    break
                await asyncio.sleep(0.02)
            row: dict[str, Any] = {"turn": index}
            if spoke_until is not None:
                if heard is not None:
                    row["client_first_audio_ms"] = (heard - spoke_until) * 1000
                await _until_quiet(client, spoke_until, reply_timeout_s)
            metrics = client.got.of_type("metrics")
            if len(metrics) > metrics_seen:
                row |= {f"{k}_ms": v for k, v in metrics[metrics_seen]["stages_ms"].items()}
            rows.append(row)
            await asyncio.sleep(pause_s)
    return rows


def _p50(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: list[list[dict[str, Any]]], turns: int) -> list[dict[str, Any]]:
    """p50 of every measured figure per turn index over ``runs``."""
    table = []
    for index in range(1, turns + 1):
        rows = [r for run in runs for r in run if r["turn"] == index]
        keys = sorted({k for r in rows for k in r if k.endswith("_ms")})
        entry: dict[str, Any] = {"turn": index, "answered": sum(1 for r in rows if len(r) > 1)}
        for key in keys:
            entry[key.removesuffix("_ms") + "_p50_ms"] = _p50([r[key] for r in rows if key in r])
        table.append(entry)
    return table


def bench_turns(turns: int = 12, runs: int = 1, url: str | None = None) -> dict[str, Any]:
    """Ask ``turns`` questions in one session, on ``runs`` fresh servers (see module doc).

    Raises:
        ValueError: ``turns`` or ``runs`` below 1, or more turns than questions.
    """
    from runtime.bench import machine_info

    if not 1 <= turns <= len(QUESTIONS):
        raise ValueError(f"turns must be between 1 and {len(QUESTIONS)}, got {turns}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    questions = asyncio.run(synthesize(QUESTIONS[:turns]))
    results: list[list[dict[str, Any]]] = []
    loads: list[float] = []  # the 1-minute load average after each run: a shared machine
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="likeness-bench-turns-") as tmp:
            server = serve(1, Path(tmp)) if url is None else contextlib.nullcontext((url, None))
            with server as (base, _pid):
                results.append(asyncio.run(converse(base, questions)))
        loads.append(os.getloadavg()[0])
    table = summarize(results, turns)
    client = [t.get("client_first_audio_p50_ms", float("nan")) for t in table]
    later = [v for v in client[1:] if v == v]
    metrics: dict[str, Any] = {
        "first_turn_client_ms": client[0],
        "later_turns_client_p50_ms": _p50(later),
        "worst_turn_client_p50_ms": max((v for v in client if v == v), default=float("nan")),
        "turns_answered": sum(t["answered"] for t in table),
        "load_average_max": max(loads),
    }
    metrics["ok"] = bool(
        metrics["turns_answered"] == turns * runs
        and all(v <= TARGET_S * 1000 for v in client if v == v)
    )
    return {
        "bench": "turns",
        "machine": machine_info(),
        "config": {"turns": turns, "runs": runs, "target_p50_s": TARGET_S},
        "metrics": metrics,
        "per_turn": table,
        "runs": results,
    }
