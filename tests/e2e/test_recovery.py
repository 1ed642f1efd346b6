"""Recovery, end to end: a real ``likeness serve`` killed and restarted under a kiosk
and a chat page in headless Chromium, and a real aiortc client killed under the server.

- The server dies (SIGKILL): within 2 s the kiosk stops saying "Listening" over the
  frozen face and shows that it is reconnecting; the chat page offers to reconnect.
- The server comes back: the kiosk shows the face and listens again within 10 s of
  ``/health`` answering ready (it polls ``/health``; no back-off wait).
- A client process dies without a word: the server ends its session and frees its
  slot in about two seconds (no heartbeat and no media for 2 s).

CI cost: 90-200 s on the 2-core machine shared with other work (two server start-ups,
each warming every model before /health says ready; Chromium with two pages).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_browser import ARTIFACTS, fake_mic, open_page, until
from tests.serving import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="apt-get install chromium"),
]

# Thresholds, each from the spread of runs on the 2-core machine shared with other
# work (server, Chromium and other suites on the same cores; load average 9-17):
# the kiosk showed the dead server 1.40-1.65 s after the kill (6 runs; the rule is 1.3 s
# of silence + a 0.1 s check + timer lag); the target is 2 s.
DEAD_SHOWN_S = 2.0
# the chat page offered to reconnect 1.28-1.49 s after the kill (6 runs).
OFFER_SHOWN_S = 2.0
# the kiosk was back (connected, listening, new frames) 1.06-2.80 s after /health said
# ready (10 runs); the limit is 10 s.
BACK_S = 10.0
# a killed client's session ended 2.14-2.90 s after the kill (10 runs; 2.01-2.33 s in 5 more
# on an idle AMD EPYC once the client answers heartbeats, so that it surely was heard before
# the kill: a client never heard gets media_timeout_s instead — the cause of a flaky run):
# 2 s of silence,
# a 0.25 s watchdog tick, time the server's loop stood still, the 50 ms /health poll;
# "about 3 s" asked.
CLIENT_GONE_S = 3.5
# Start-up warms every model before /health says ready: over a minute on a busy host.
READY_WITHIN_S = 240

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from runtime.rtc_client import CompanionClient

    async def main():
        client = CompanionClient(sys.argv[1], keep_video=False)
        await client.connect()
        await client.wait_for("state", 30, state="listening")
        await client.wait_for("heartbeat", 30)  # answered: the server has heard this client
        await asyncio.sleep(0.2)
        print(client.session_id, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("recovery"), LIKENESS_DIALOGUE__TEMPERATURE="0")
    running.start(READY_WITHIN_S)
    yield running
    running.stop()


async def sessions(url: str) -> int | None:
    """Live sessions by ``/health`` (None when the server does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            return (await http.get(f"{url}/health")).json()["sessions"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def test_a_client_killed_without_a_word_has_its_session_ended(server):
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 60)
        session_id = line.decode().strip()
        assert session_id, "the client did not connect"
        assert await sessions(server.url) == 1
        client.kill()  # SIGKILL: no BYE, no DTLS close, no "end" message
        killed = time.monotonic()
        while time.monotonic() - killed < 15:
            if await sessions(server.url) == 0:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed
    finally:
        if client.returncode is None:
            client.kill()
        await client.wait()
    print(f"the killed client's session ended {took:.2f} s after the kill")
    assert took <= CLIENT_GONE_S, f"session {session_id} lived {took:.2f} s after its client"
    log = server.log.read_text()
    assert f"reason='client gone' session={session_id}" in log


async def ready_at(url: str, within_s: float) -> float:
    """``time.time()`` when ``/health`` first answers 200 (polled every 50 ms)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=0.5) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return time.time()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"/health not ready within {within_s} s")


async def test_kill_and_restart_the_server_under_a_kiosk_and_a_chat_page(server, tmp_path):
    from playwright.async_api import async_playwright

    mic = fake_mic(tmp_path / "quiet.wav", (120.0, None))
    async with async_playwright() as pw:
        browser, kiosk, errors = await open_page(pw, f"{server.url}/kiosk.html", mic)
        try:
            chat = await browser.new_page(viewport={"width": 1000, "height": 700})
            await chat.goto(f"{server.url}/?autostart=1")
            for page in (kiosk, chat):
                await until(page, "likeness.connected && likeness.videoFrames() > 10", 30)
            await until(kiosk, "likeness.state === 'listening'", 10)

            killed = time.time()
            server.proc.kill()  # SIGKILL: the pages get no goodbye
            server.proc.wait()
            server.proc = None
            dead_at = await until(kiosk, "likeness.deadAt", 10, every_s=0.05) / 1000
            badge = await kiosk.evaluate("document.getElementById('state-text').textContent")
            dimmed = await kiosk.evaluate("document.body.classList.contains('is-reconnecting')")
            await until(chat, "!document.getElementById('retry-now').hidden", 10, every_s=0.05)
            offer_at = await chat.evaluate("likeness.deadAt") / 1000
            offer = await chat.evaluate("document.getElementById('conn-status').textContent")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await kiosk.screenshot(path=str(ARTIFACTS / "e2e-kiosk-reconnecting.png"))

            # Restart; watch the kiosk meanwhile: never "Listening" while disconnected.
            restart = asyncio.create_task(asyncio.to_thread(server.start, READY_WITHIN_S))
            ready = await ready_at(server.url, READY_WITHIN_S)
            frames = await kiosk.evaluate("likeness.videoFrames()")
            shown: set[str] = set()
            back = None
            while time.time() - ready < 20:
                now = await kiosk.evaluate(
                    "[likeness.connected, likeness.state, likeness.videoFrames(),"
                    " document.getElementById('state-text').textContent]"
                )
                connected, state, seen, text = now
                if not connected:
                    shown.add(text)
                if connected and state == "listening" and seen > frames + 10:
                    back = time.time()
                    break
                await asyncio.sleep(0.1)
            await restart
            assert back is not None, "the kiosk did not come back within 20 s"
            await kiosk.screenshot(path=str(ARTIFACTS / "e2e-kiosk-back.png"))
        finally:
            await browser.close()
    dead_s, offer_s, back_s = dead_at - killed, offer_at - killed, back - ready
    print(
        f"kiosk showed the dead server {dead_s:.2f} s after the kill; chat offered to"
        f" reconnect after {offer_s:.2f} s; kiosk back {back_s:.2f} s after /health ready"
    )
    assert badge == "Reconnecting" and dimmed
    assert dead_s <= DEAD_SHOWN_S
    assert "Connection lost" in offer and offer_s <= OFFER_SHOWN_S
    assert "Listening" not in shown, shown
    assert back_s <= BACK_S
    assert not errors, errors
