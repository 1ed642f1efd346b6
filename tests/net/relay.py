"""A live ``likeness serve`` in the lab's server namespace and a recording client in the
NAT'd client namespace, relay-only through the lab's coturn (tests/net)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from runtime.netlab import NetLab
from runtime.rtc_client import CompanionClient
from voice.audio import write_wav

RATE = 48_000


@contextlib.contextmanager
def serve_in_lab(lab: NetLab, data: Path, secret: str, **env: str) -> Iterator[str]:
    """``likeness serve`` in the lab (relay-only pages, TURN = the lab's coturn with
    ``secret``), short replies; yields its URL (reached from the client namespace)."""
    settings = {
        "LIKENESS_SERVER__MAX_SESSIONS": "2",
        "LIKENESS_DIALOGUE__MAX_TOKENS": "60",
        "LIKENESS_DIALOGUE__TEMPERATURE": "0",
        **env,
    }
    with lab.companion(data, secret, settings) as (url, _pid):
        yield url


class RecordingClient(CompanionClient):
    """A CompanionClient that keeps the received voice (48 kHz mono, by its pts) and
    each video frame's arrival and media time (no pixels)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audio: list[tuple[float, int, np.ndarray]] = []  # (arrival, pts, pcm)
        self.video_pts: list[tuple[float, float]] = []  # (arrival, media time in s)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                channels = len(frame.layout.channels)
                mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.ravel()
                now = time.monotonic()
                self.audio.append((now, int(frame.pts), mono))
                self.got.audio_rms.append((now, float(np.sqrt(np.mean(mono**2)))))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                self.got.video.append((now, np.zeros(0)))
                self.video_pts.append((now, float(frame.pts * frame.time_base)))

    def voice_between(self, t0: float, t1: float) -> np.ndarray:
        """The voice that arrived between two monotonic times, each frame at its pts
        (a lost frame leaves silence, as a player without concealment would)."""
        frames = [(pts, pcm) for t, pts, pcm in self.audio if t0 <= t <= t1]
        if not frames:
            return np.zeros(0, np.float32)
        start = frames[0][0]
        out = np.zeros(frames[-1][0] - start + len(frames[-1][1]), np.float32)
        for pts, pcm in frames:
            out[pts - start : pts - start + len(pcm)] = pcm
        return out


def run_client(lab: NetLab, main: Any, timeout: float = 120) -> Any:
    """Run the coroutine ``main()`` in the client namespace (its own event loop)."""
    return lab.call("client", lambda: asyncio.run(main()), timeout)


async def chromium_in_lab(pw: Any, lab: NetLab, url: str, folder: Path) -> Any:
    """Headless Chromium running in the client namespace (a wrapper enters it; Playwright
    talks to it over pipes), its fake microphone silent, ``url`` a secure origin."""
    wrapper = folder / "chromium-in-client-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.ns["client"]} /usr/bin/chromium "$@"\n')
    wrapper.chmod(0o755)
    silence = folder / "silence.wav"
    write_wav(silence, np.zeros(RATE * 60, np.float32), RATE)
    return await pw.chromium.launch(
        executable_path=str(wrapper),
        args=[
            "--no-sandbox",
            f"--unsafely-treat-insecure-origin-as-secure={url}",  # getUserMedia over http
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={silence}%noloop",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking",
            "--disable-component-update",
        ],
    )


async def chat_page_in_lab(pw: Any, lab: NetLab, url: str, folder: Path) -> tuple[Any, Any, list]:
    """The chat page (``?autostart=1``) in :func:`chromium_in_lab`; returns ``(browser,
    page, page errors)`` once the page is connected."""
    browser = await chromium_in_lab(pw, lab, url, folder)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    await page.goto(f"{url}/?autostart=1")
    deadline = time.monotonic() + 30
    while not await page.evaluate("window.likeness && likeness.connected"):
        if time.monotonic() > deadline:
            found = await page.evaluate("JSON.stringify(window.likeness && likeness.errors)")
            await browser.close()
            raise TimeoutError(f"the page did not connect within 30 s: {found}")
        await asyncio.sleep(0.1)
    return browser, page, errors
