"""``likeness bench soak --page kiosk``: one long session of the kiosk page in headless
Chromium, measured from the browser's own ``getStats``.

A fresh ``likeness serve`` (or ``url``) and Debian's ``/usr/bin/chromium`` driven by
Playwright, its fake microphone playing one WAV made beforehand: silence, then the
soak's questions (:func:`runtime.soak_client.make_questions`) at seeded times 20-40 s
apart (:func:`~runtime.page_soak_metrics.plan_questions`). The page is the real
``kiosk.html``; nothing in it is changed. Every :data:`SAMPLE_S` the soak reads, from
the page, ``likeness.connection._pc.getStats()`` (inbound video: frames decoded and
dropped, freezes and their length, fps; inbound audio: concealed samples, jitter
buffer) and the ``window.likeness`` hooks (session id, reconnects), and from the
server its RSS and open tasks; every :data:`EVENT_POLL_S` the page's new data-channel
events (states, transcripts, replies), to tell which questions were answered.
:mod:`runtime.page_soak_metrics` holds the measures and the targets.

The microphone's clock: Chromium starts the file when the page opens its microphone,
before the session. The audio ``media-source`` stat ``totalSamplesDuration`` says how
much of it has played, so the soak puts each question on its own clock from that.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runtime.bench_session import rss_mb, serve
from runtime.errors import InputError
from runtime.page_soak_metrics import (
    PageTurn,
    StatsSample,
    assign_events,
    minute_rows,
    plan_questions,
    verdict,
)
from runtime.soak_client import Question, load_voices, make_questions
from runtime.soak_metrics import TARGET_RSS_GROWTH_PCT
from voice.audio import resample, to_int16

PAGES = ("kiosk",)
CHROMIUM = Path("/usr/bin/chromium")
SAMPLE_S = 5.0  # getStats, RSS and tasks are read this often
EVENT_POLL_S = 1.0  # the page's new events are read this often (a turn's resolution)
LEAD_S = 15.0  # the first question, after the microphone opened (the page connects)
QUIET_END_S = 20.0  # no question this close to the end: its reply would be cut off
TAIL_S = 60.0  # the WAV runs this much longer than the run (the page starts late)
# Chromium resamples the file (AudioConverter) and reads it whole into memory: 16 kHz
# keeps an hour at 117 MB (48 kHz: 350 MB), and the server's ASR hears 16 kHz anyway.
MIC_RATE = 16_000
CONNECT_S = 90.0  # page loaded -> first decoded video frame

# Read-only: the kiosk's hooks and its connection's current peer connection.
STATS_JS = """async () => {
  const L = window.likeness;
  if (!L) return null;
  const out = {sessionId: L.sessionId, reconnects: L.reconnects, video: null, audio: null,
               micS: null};
  const pc = L.connection && L.connection._pc;
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.video = {framesDecoded: s.framesDecoded, framesDropped: s.framesDropped,
        freezeCount: s.freezeCount, totalFreezesDuration: s.totalFreezesDuration,
        framesPerSecond: s.framesPerSecond};
    } else if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.audio = {concealedSamples: s.concealedSamples,
        totalSamplesReceived: s.totalSamplesReceived,
        jitterBufferDelay: s.jitterBufferDelay,
        jitterBufferEmittedCount: s.jitterBufferEmittedCount};
    } else if (s.type === "media-source" && s.kind === "audio") {
      out.micS = s.totalSamplesDuration;
    }
  });
  return out;
}"""
# The events since the last call (likeness.events is capped at 500: read it often).
# The only thing written is the soak's own bookmark, window.__likenessSoakSeen.
EVENTS_JS = """() => {
  const L = window.likeness;
  if (!L) return [];
  const events = L.events, seen = window.__likenessSoakSeen;
  const fresh = events.slice(seen ? events.lastIndexOf(seen) + 1 : 0);
  if (events.length) window.__likenessSoakSeen = events[events.length - 1];
  return fresh.map((e) => ({type: e.type, state: e.state, reason: e.reason, final: e.final,
                            text: e.type === "transcript" ? e.text : undefined,
                            stages_ms: e.stages_ms}));
}"""


@dataclass(frozen=True, slots=True)
class PageSoakOptions:
    """One soak of a page in headless Chromium.

    Attributes:
        minutes: length of the measured session (from the first decoded frame).
        page: which page: "kiosk" (``/kiosk.html``).
        seed: question order, voices and the gaps between questions.
        interval_s: a question every ``uniform(*interval_s)`` seconds, said by the
            fake microphone whatever the companion is doing.
        url: a running server to use instead of starting a fresh one (then no RSS).
        server_env: ``LIKENESS_*`` settings for the fresh server.
        server_nice: the fresh server's CPU priority below the browser's (0-19).
        chromium: the browser Playwright drives.
        mic_rate: the fake microphone WAV's sample rate (16-bit mono).
    """

    minutes: int
    page: str = "kiosk"
    seed: int = 0
    interval_s: tuple[float, float] = (20.0, 40.0)
    url: str | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    server_nice: int = 0
    chromium: Path = CHROMIUM
    mic_rate: int = MIC_RATE

    def __post_init__(self) -> None:
        if self.page not in PAGES:
            raise ValueError(f"page must be one of {', '.join(PAGES)}, got {self.page!r}")
        if self.minutes < 1:
            raise ValueError(f"minutes must be at least 1, got {self.minutes}")
        if not 0 <= self.server_nice <= 19:
            raise ValueError(f"server_nice must be 0-19, got {self.server_nice}")
        low, high = self.interval_s
        if not 5.0 <= low <= high:
            raise ValueError(f"interval_s must be (low, high) with 5 <= low <= high: {low, high}")
        if not 8_000 <= self.mic_rate <= 48_000:
            raise ValueError(f"mic_rate must be 8000-48000 Hz, got {self.mic_rate}")


MinuteHook = Callable[[dict[str, float]], None]


def check_browser(chromium: Path = CHROMIUM) -> None:
    """Fail fast, before any server or speech: Playwright and Chromium must be here.

    Raises:
        InputError: either is missing (the message says how to install it).
    """
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        raise InputError(
            "--page needs Playwright: pip install -e '.[dev]' (it drives Debian's chromium)"
        ) from None
    if not chromium.is_file():
        raise InputError(f"--page needs Chromium at {chromium}: apt-get install chromium")


def write_mic_wav(
    path: Path, plan: list[tuple[float, int]], questions: list[Question], rate: int, length_s: float
) -> int:
    """Write the fake microphone's WAV: silence with each planned question at its time.

    Written a second at a time (an hour is 117 MB at 16 kHz); returns its size in bytes.
    Questions must not overlap (:func:`plan_questions` keeps them 5 s or more apart).
    """
    clips = [to_int16(resample(q.pcm, q.sample_rate, rate)) for q in questions]
    total = round(length_s * rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        at = 0
        for start_s, index in plan:
            begin = round(start_s * rate)
            if begin < at:
                raise ValueError(f"the question at {start_s:.1f} s overlaps the one before")
            at = _silence(out, at, begin, rate)
            clip = clips[index][: max(total - at, 0)]
            out.writeframes(clip.tobytes())
            at += len(clip)
        _silence(out, at, total, rate)
    return path.stat().st_size


def _silence(out: wave.Wave_write, at: int, until: int, rate: int) -> int:
    while at < until:
        n = min(until - at, rate)
        out.writeframes(bytes(2 * n))
        at += n
    return at


async def _server_reading(http: httpx.AsyncClient, url: str, pid: int | None) -> tuple[float, int]:
    tasks = -1
    with contextlib.suppress(httpx.HTTPError, ValueError, TypeError, AttributeError):
        tasks = int((await http.get(f"{url}/health")).json().get("tasks", -1))
    return (rss_mb(pid) if pid else math.nan), tasks


@dataclass(slots=True)
class _Record:
    samples: list[StatsSample] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)
    opened: float = math.nan  # when the page was asked for
    mic_t0: float = math.nan  # soak-clock time of the WAV's first sample
    mic_drift_s: float = 0.0  # later estimates of mic_t0 minus the first (same session)
    start: float = math.nan
    page_errors: list[str] = field(default_factory=list)
    browser: str = ""


async def _evaluate(page: Any, script: str, rec: _Record) -> Any:
    """``page.evaluate(script)``; None, and a page error noted, while the page reloads
    (the kiosk reloads itself after repeated failures)."""
    from playwright.async_api import Error

    try:
        return await page.evaluate(script)
    except Error as err:
        rec.page_errors.append(f"evaluate: {err}")
        return None


async def _read(page: Any, http: httpx.AsyncClient, url: str, pid: int | None, rec: _Record):
    """One reading of the page and the server; fixes the microphone's clock."""
    now = time.monotonic()
    answer = await _evaluate(page, STATS_JS, rec) or {}
    rss, tasks = await _server_reading(http, url, pid)
    sample = StatsSample.from_page(now, answer, rss, tasks)
    mic_s = answer.get("micS")
    if isinstance(mic_s, (int, float)) and mic_s > 0:
        first = not rec.samples or sample.session_id == rec.samples[0].session_id
        if math.isnan(rec.mic_t0):
            rec.mic_t0 = now - mic_s
        elif first:
            rec.mic_drift_s = now - mic_s - rec.mic_t0
    return sample


async def _session(
    opts: PageSoakOptions,
    url: str,
    pid: int | None,
    wav: Path,
    plan: list[tuple[float, int]],
    questions: list[Question],
    on_minute: MinuteHook,
) -> _Record:
    from playwright.async_api import async_playwright

    rec = _Record()
    async with async_playwright() as pw, httpx.AsyncClient(timeout=5) as http:
        browser = await pw.chromium.launch(
            executable_path=str(opts.chromium),
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        rec.browser = browser.version
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda err: rec.page_errors.append(str(err)))
            rec.opened = time.monotonic()
            await page.goto(f"{url}/{opts.page}.html")
            deadline = time.monotonic() + CONNECT_S
            while (first := await _read(page, http, url, pid, rec)).frames_decoded == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {opts.page} page decoded no video in {CONNECT_S} s")
                await asyncio.sleep(0.2)
            rec.samples.append(first)
            rec.start = first.t
            end, minute = rec.start + 60 * opts.minutes, 0
            next_read, next_events = rec.start + SAMPLE_S, rec.start
            while next_read <= end + 1e-6:  # the last reading is at the run's end
                now = time.monotonic()
                if now >= next_events:
                    rec.events += [(now, e) for e in await _evaluate(page, EVENTS_JS, rec) or []]
                    next_events += EVENT_POLL_S
                if now >= next_read:
                    rec.samples.append(await _read(page, http, url, pid, rec))
                    next_read += SAMPLE_S
                    while minute < opts.minutes and now >= rec.start + 60 * (minute + 1) - 1e-3:
                        minute += 1
                        on_minute(_rows(opts, rec, plan, questions)[minute - 1])
                await asyncio.sleep(max(0.0, min(next_read, next_events) - time.monotonic()))
            last = await _evaluate(page, EVENTS_JS, rec) or []
            rec.events += [(time.monotonic(), e) for e in last]
            for row in _rows(opts, rec, plan, questions)[minute:]:
                on_minute(row)
        finally:
            await browser.close()
    return rec


def _turns(
    opts: PageSoakOptions, rec: _Record, plan: list[tuple[float, int]], questions: list[Question]
) -> tuple[list[PageTurn], int]:
    """The questions said during the run (on the soak's clock), with their events; and
    how many were said before the first video frame (the page was still connecting)."""
    turns, early = [], 0
    end = rec.start + 60 * opts.minutes
    # Without the media-source stat, the page's opening stands in for the microphone's.
    mic_t0 = rec.opened if math.isnan(rec.mic_t0) else rec.mic_t0
    for at_s, index in plan:
        asked = mic_t0 + at_s
        if asked < rec.start:
            early += 1
        elif asked < end:
            q = questions[index]
            turns.append(PageTurn(asked, asked + q.voice_end_s, q.text))
    assign_events(turns, rec.events)
    return turns, early


def _rows(
    opts: PageSoakOptions, rec: _Record, plan: list[tuple[float, int]], questions: list[Question]
) -> list[dict[str, float]]:
    return minute_rows(rec.samples, _turns(opts, rec, plan, questions)[0], rec.start, opts.minutes)


def bench_page_soak(opts: PageSoakOptions, on_minute: MinuteHook | None = None) -> dict[str, Any]:
    """Run one page soak; returns ``{"bench", "machine", "config", "metrics", "runs"}``.

    ``on_minute`` gets each minute's row as soon as the minute is over (progress).
    ``metrics`` holds the summary and one ``target_*`` entry per target: "pass",
    "fail" or "n/a". The WAV is made in a temporary folder and deleted with it.

    Raises:
        InputError: Playwright or Chromium is missing.
        RuntimeError: the server did not start, or the page showed no video.
    """
    from runtime.bench import machine_info

    check_browser(opts.chromium)
    voices = load_voices()
    questions = make_questions(opts.seed, voices)
    length_s = 60.0 * opts.minutes + TAIL_S
    plan = plan_questions(
        opts.seed, len(questions), 60.0 * opts.minutes, opts.interval_s, LEAD_S, QUIET_END_S
    )
    with tempfile.TemporaryDirectory(prefix="likeness-page-soak-") as tmp:
        wav = Path(tmp) / "mic.wav"
        wav_bytes = write_mic_wav(wav, plan, questions, opts.mic_rate, length_s)
        data = Path(tmp) / "server"
        data.mkdir()
        server = (
            serve(1, data, env=opts.server_env, nice=opts.server_nice)
            if opts.url is None
            else contextlib.nullcontext((opts.url, None))
        )
        with server as (url, pid):
            hook = on_minute or (lambda _row: None)
            rec = asyncio.run(_session(opts, url, pid, wav, plan, questions, hook))
        ended = next(
            (str(e.get("reason") or "ended") for _, e in rec.events if e.get("state") == "ended"),
            "",
        )
        log = data / "server.log"
        server_log = log.read_text().splitlines()[-20:] if ended and log.is_file() else []
    turns, early = _turns(opts, rec, plan, questions)
    rows = minute_rows(rec.samples, turns, rec.start, opts.minutes)
    judged = verdict(rec.samples, rows, turns, ended)
    word = {True: "pass", False: "fail", None: "n/a"}
    metrics: dict[str, Any] = {
        **judged["summary"],
        "questions_before_video": early,
        "page_errors": len(rec.page_errors),
        "mic_clock_drift_s": rec.mic_drift_s,
    }
    metrics |= {f"target_{k}": word[v] for k, v in judged["targets"].items()}
    return {
        "bench": "soak",
        "machine": machine_info(),
        "config": {
            "page": opts.page,
            "minutes": opts.minutes,
            "seed": opts.seed,
            "interval_s": list(opts.interval_s),
            "server": opts.url or "fresh likeness serve (defaults)",
            "server_env": opts.server_env,
            "server_nice": opts.server_nice,
            "browser": f"{opts.chromium} {rec.browser}",
            "mic_wav": {"rate": opts.mic_rate, "seconds": length_s, "bytes": wav_bytes},
            "voices": sorted({q.voice for q in questions}),
            "targets": {
                "freezes": 0,
                "rss_growth_pct": TARGET_RSS_GROWTH_PCT,
                "reconnects": 0,
                "unanswered": 0,
            },
        },
        "metrics": metrics,
        "runs": {
            "server_log_tail": server_log,
            "page_errors": rec.page_errors[-20:],
            "minutes": rows,
            "turns": [_turn_json(t, rec.start) for t in turns],
            "samples": [_sample_json(x, rec.start) for x in rec.samples],
        },
    }


def _turn_json(turn: PageTurn, start: float) -> dict[str, Any]:
    return {
        "at_s": round(turn.asked_at - start, 2),
        "question": turn.text,
        "transcript": turn.transcript,
        # After the question's last loud sample, to the event poll's resolution (1 s).
        "transcript_after_s": _after(turn.transcript_at, turn.voice_end),
        "speaking_after_s": _after(turn.speaking_at, turn.voice_end),
        "replies": turn.replies,
        "interrupted": turn.interrupted,
        "server_ms": turn.server_ms,
    }


def _after(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 1)


def _sample_json(sample: StatsSample, start: float) -> dict[str, Any]:
    return asdict(sample) | {"t": round(sample.t - start, 2)}
