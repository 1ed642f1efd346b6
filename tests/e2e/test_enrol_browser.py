"""An uploaded clip end to end, for review only: a real server, a real headless Chromium with a
fake camera and mic, and no grant behind it (a grant needs the live ceremony:
tests/e2e/test_ceremony_browser.py).

The challenge is random and Chromium's fake devices are fixed at launch, so the test
signs up, uploads the photo and asks for the challenge over HTTP first (httpx, keeping
the session cookie); then renders the synthetic person answering *that* challenge into
a raw I420 ``.y4m`` (fake camera) and a WAV (fake microphone); then launches Chromium
with them, hands it the session cookie, opens ``/portal/enrol.html`` (the page itself no
longer records clips), records with the browser's own MediaRecorder and uploads to
``POST /api/consent/enrol/clip`` as an operator's re-check would. It expects the clip's
five points to pass and the extra "live" point to fail with its reason, and the grant
request on that record to be refused.

The uploaded WebM is also read back to measure how far
the browser moved the sound against the picture: Chromium starts the fake camera and
the fake microphone separately. The figures go to ``test-artifacts/enrol_browser.json``.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest
import soundfile as sf

from consent.enrolment import CLIP_REVIEW_ONLY
from consent.liveness.clip import read_clip
from consent.liveness.testclips import make_clip, reference_photo
from consent.liveness.verify import load_asr
from tests.serving import Server
from voice.digits import parse_digits
from voice.types import AudioChunk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="apt-get install chromium"),
]
ARTIFACTS = Path(
    os.environ.get("LIKENESS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
API = "/api/consent"
SESSION_COOKIE = "likeness_portal"
FPS = 12
# The face is drawn 480 px square and cropped to a 4:3 webcam frame (top and bottom
# eighths go; the face spans 0.29..0.71 of the width and 0.36..0.77 of the height). Padded
# to 4:3 instead, the face is too small for the check's detector once the head turns
# (it then follows landmarks, whose noisy yaw can split one turn in two).
WIDTH, HEIGHT = 480, 360
LEAD_S = 2.0  # still face and silence before the clip: the recorder starts after the devices
MIC_RATE = 48_000


def record_seconds(challenge: dict) -> int:
    """The recording length the enrolment page used to record for (the code and turns)."""
    digits, turns = len(challenge["digits"]), len(challenge["turns"])
    return min(30, max(8, round(3 + 0.8 * digits + 2.2 * turns)))


def mouth_signal(frame: np.ndarray) -> float:
    """How much dark mouth interior a frame shows (pixels of the synthetic face's mouth)."""
    im = frame.astype(np.int16)
    r, g, b = im[..., 0], im[..., 1], im[..., 2]
    return float(((r > 40) & (r < 120) & (g < 60) & (b < 70) & (r - g > 25)).sum())


def best_lag(
    times: np.ndarray, mouth: np.ndarray, audio: np.ndarray, audio_start: float, rate: int
) -> float:
    """Seconds by which the picture lags the sound (positive: the mouth moves late)."""
    hop = int(0.01 * rate)
    n = len(audio) // hop
    rms = np.sqrt((audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1))
    env_t = audio_start + (np.arange(n) + 0.5) * hop / rate
    smooth = np.convolve(rms, np.ones(8) / 8, mode="same")
    lags = np.arange(-1.0, 1.0001, 0.01)
    scores = []
    for lag in lags:
        env = np.interp(times - lag, env_t, smooth, left=0.0, right=0.0)
        ok = env.std() > 0 and mouth.std() > 0
        scores.append(float(np.corrcoef(mouth, env)[0, 1]) if ok else -1.0)
    return float(lags[int(np.argmax(scores))])


def answer(folder: Path, challenge: dict, tts) -> Path:
    """The synthetic person answering ``challenge``, as WebM (VP8 + Opus)."""
    return make_clip(
        folder / f"answer-{challenge['digits']}.webm",
        challenge["digits"],
        challenge["turns"],
        seed=0,
        fps=FPS,
        size=WIDTH,
        duration=record_seconds(challenge) + 5.0,  # the camera must not loop while recording
        tts=tts,
    )


def intelligible(source: Path, digits: str, asr) -> bool:
    """Whether tiny.en reads the synthetic voice's code right (it misreads about 1 in 8)."""
    clip = read_clip(source)
    heard = asr.transcribe_sync(AudioChunk(clip.audio, clip.sample_rate)).text
    return parse_digits(heard) == digits


def fake_devices(folder: Path, source: Path, challenge: dict) -> dict:
    """The answer as a raw I420 .y4m (fake camera) and a 48 kHz WAV (fake microphone)."""
    frames, audio = [], []
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    with av.open(str(source)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=MIC_RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                audio.append(out.to_ndarray().reshape(-1))
    top = (WIDTH - HEIGHT) // 2
    frames = [np.ascontiguousarray(f[top : top + HEIGHT]) for f in frames]
    frames = [frames[0]] * int(LEAD_S * FPS) + frames
    y4m = folder / "camera.y4m"
    with open(y4m, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    pcm = np.concatenate([np.zeros(int(LEAD_S * MIC_RATE), np.float32), *audio])
    wav = folder / "mic.wav"
    sf.write(wav, pcm, MIC_RATE, subtype="PCM_16")
    times = np.arange(len(frames)) / FPS
    mouth = np.array([mouth_signal(f) for f in frames])
    return {
        "y4m": y4m,
        "wav": wav,
        "seconds": record_seconds(challenge),
        "source_lag": best_lag(times, mouth, pcm, 0.0, MIC_RATE),
    }


@pytest.fixture(scope="module")
def asr():
    return load_asr()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("enrol-e2e")
    running = Server(data).start()
    yield running
    running.stop()


def signed_up(server: Server) -> tuple[httpx.Client, str, str]:
    client = httpx.Client(base_url=server.url, timeout=120)
    res = client.post(
        f"{API}/auth/signup",
        json={
            "email": "ann@example.org",
            "password": "a long enough passphrase 42",
            "display_name": "Ann Example",
        },
    )
    assert res.status_code == 201, res.text
    # The cookie is Secure: httpx keeps it for https only, so send it by hand over http.
    token = res.cookies[SESSION_COOKIE]
    client.cookies.clear()
    client.headers["Cookie"] = f"{SESSION_COOKIE}={token}"
    me = client.get(f"{API}/auth/me")
    assert me.status_code == 200, me.text
    return client, token, me.json()["csrf_token"]


RECORD_JS = """async ([query, seconds]) => {
  const me = await (await fetch("/api/consent/auth/me", { credentials: "same-origin" })).json();
  const t0 = performance.now();
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const timings = { getUserMediaMs: performance.now() - t0 };
  const mime = ["video/webm;codecs=vp8,opus", "video/webm"].find(
    (type) => MediaRecorder.isTypeSupported(type));
  const chunks = [];
  const recorder = new MediaRecorder(stream, { mimeType: mime });
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  let startedAt = Date.now() / 1000;
  const started = new Promise((resolve) => (recorder.onstart = () => {
    startedAt = Date.now() / 1000;
    timings.recorderStartMs = performance.now() - t0;
    resolve();
  }));
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  recorder.start(500);
  await started;
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((track) => track.stop());
  const blob = new Blob(chunks, { type: "video/webm" });
  const t1 = performance.now();
  const res = await fetch(
    `/api/consent/enrol/clip?${query}&started_at=${startedAt.toFixed(3)}`, {
      method: "POST",
      body: blob,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": me.csrf_token, "Content-Type": "video/webm",
                 Accept: "application/json" },
    });
  timings.checkMs = performance.now() - t1;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return { status: res.status, body: await res.json(), clip: btoa(text), timings };
}"""


def test_uploaded_clip_is_checked_but_no_grant_rests_on_it(server, piper_tts, asr, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    client, token, csrf = signed_up(server)
    headers = {"X-CSRF-Token": csrf}
    photo = cv2.imencode(".png", cv2.cvtColor(reference_photo(0), cv2.COLOR_RGB2BGR))[1]
    res = client.post(
        f"{API}/enrol/photo",
        content=photo.tobytes(),
        headers=headers | {"Content-Type": "image/png"},
    )
    assert res.status_code == 200, res.text
    avatar_id = res.json()["avatar_id"]
    # tiny.en misreads about 1 code in 8 that Piper speaks ("four" as "far"): that is
    # measured elsewhere; here a code it reads right is asked for.
    attempts = 0
    while True:
        attempts += 1
        res = client.post(f"{API}/enrol/challenge", json={"avatar_id": avatar_id}, headers=headers)
        assert res.status_code == 200, res.text
        challenge = res.json()
        source = answer(tmp_path, challenge, piper_tts)
        if intelligible(source, challenge["digits"], asr) or attempts == 4:
            break
    devices = fake_devices(tmp_path, source, challenge)
    devices["attempts"] = attempts
    cookie = {
        "name": SESSION_COOKIE,
        "value": token,
        "url": server.url,
        "httpOnly": True,
        "secure": True,  # as the server set it: Chromium keeps it on http://127.0.0.1
        "sameSite": "Strict",
    }

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={devices['y4m']}",
                f"--use-file-for-fake-audio-capture={devices['wav']}%noloop",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            context.add_cookies([cookie])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{server.url}/portal/enrol.html")
            assert page.locator("#record").count() == 0  # the page records no clips now
            query = f"nonce={challenge['nonce']}"
            done = page.evaluate(RECORD_JS, [query, devices["seconds"]])
            assert not errors, errors
        finally:
            browser.close()

    assert done["status"] == 200, done["body"]
    result, timings = done["body"], done["timings"]
    print("\npoints:", json.dumps(result["points"], indent=1))
    (ARTIFACTS / "e2e-enrol-clip.webm").write_bytes(base64.b64decode(done["clip"]))
    points = {p["name"]: p for p in result["points"]}
    assert list(points) == ["digits", "head_turns", "lip_sync", "identity", "nonce", "live"]
    clip_points = [p for name, p in points.items() if name != "live"]
    assert all(p["passed"] for p in clip_points), result  # the clip itself holds ...
    assert points["live"] == {"name": "live", "passed": False, "reason": CLIP_REVIEW_ONLY}
    assert result["passed"] is False  # ... but it is for review only

    res = client.post(
        f"{API}/grants",
        json={
            "avatar_id": avatar_id,
            "liveness_id": result["liveness_id"],
            "deployments": ["kiosk"],
            "purposes": ["eldercare"],
            "expires_days": 30,
        },
        headers=headers,
    )
    assert res.status_code == 422 and "did not pass" in res.json()["error"], res.text
    assert client.get(f"{API}/grants").json()["grants"] == []

    recorded = (ARTIFACTS / "e2e-enrol-clip.webm").read_bytes()
    clip = read_clip(recorded)
    times = clip.times
    mouth = np.array([mouth_signal(f) for f in clip.frames])
    lag = best_lag(times, mouth, clip.audio, clip.audio_start, clip.sample_rate)
    figures = {
        "record_seconds": devices["seconds"],
        "challenges_asked": devices["attempts"],
        "clip_seconds": round(clip.duration, 3),
        "clip_bytes": len(recorded),
        "video_size": list(clip.source_size),
        "audio_start_s": round(clip.audio_start, 3),
        "first_frame_s": round(float(times[0]), 3),
        "source_av_lag_s": devices["source_lag"],
        "browser_av_lag_s": lag,
        "added_by_browser_s": round(lag - devices["source_lag"], 3),
        "scores": {p["name"]: p["reason"] for p in result["points"]},
        "server_check_s": result["seconds"],
        "page_timings": timings,
    }
    (ARTIFACTS / "enrol_browser.json").write_text(json.dumps(figures, indent=2))
    print("figures:", json.dumps(figures, indent=1))
    # The check searches +-0.2 s for the best lip-sync match: the browser must stay inside.
    assert abs(figures["added_by_browser_s"]) <= 0.2, figures
