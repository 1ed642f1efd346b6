"""The clocked media tracks over real aiortc peers on loopback (no browser, no mocks).

Timings on the receiving side include aiortc's own receiver buffering: its audio
jitter buffer holds 4 Opus packets (80 ms) and its video jitter buffer releases a
frame when the next frame's first packet arrives (one frame period).
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.inbound import inbound_audio
from runtime.media import AudioOut, MediaClock, VideoOut
from tests.runtime.rtc_loopback import rtc_loopback

TTS_RATE = 22_050  # Piper's rate: the tracks resample it


def tone(freq: float, seconds: float, rate: int = TTS_RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def mono(frame: av.AudioFrame) -> np.ndarray:
    """A received (packed s16, mono or stereo) frame as float32 mono."""
    data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
    return data.mean(axis=1) / 32768.0


class Tap(MediaStreamTrack):
    """Passes a track through and keeps what it sent: (wall time, frame)."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind, self.source = source.kind, source
        self.sent: list[tuple[float, av.AudioFrame | av.VideoFrame]] = []

    async def recv(self):
        frame = await self.source.recv()
        self.sent.append((time.monotonic(), frame))
        return frame


class ToneMic(MediaStreamTrack):
    """A browser-like microphone: stereo s16 48 kHz 20 ms frames of a sine, real time."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq, self.n, self.start = freq, 0, None

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.n / 48_000 - time.monotonic()))
        t = (self.n + np.arange(960)) / 48_000
        s16 = (0.3 * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(s16, 2)[None, :], format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48_000, self.n
        frame.time_base = fractions.Fraction(1, 48_000)
        self.n += 960
        return frame


async def watch_loop(stalls: list[tuple[float, float]], period: float = 0.01) -> None:
    """Note every time the event loop was held up more than 50 ms (an overloaded host)."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(period)
        if time.monotonic() - before - period > 0.05:
            stalls.append((before, time.monotonic()))


async def record(track: MediaStreamTrack, seconds: float) -> list[tuple[float, object]]:
    """Frames received for ``seconds``, each with its arrival (monotonic) time."""
    out: list[tuple[float, object]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            async with asyncio.timeout(max(0.05, end - time.monotonic())):
                frame = await track.recv()
        except (TimeoutError, MediaStreamError):
            break
        out.append((time.monotonic(), frame))
    return out


def audio_of(frames: list[tuple[float, object]]) -> np.ndarray:
    return np.concatenate([mono(f) for _, f in frames])


def loud_spans(pcm: np.ndarray, level: float = 0.05, block: int = 480) -> list[tuple[int, int]]:
    """(start, end) sample ranges of consecutive 10 ms blocks louder than ``level``."""
    n = len(pcm) // block
    loud = np.abs(pcm[: n * block]).reshape(n, block).max(axis=1) > level
    spans, start = [], None
    for i, on in enumerate([*loud, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start * block, i * block))
            start = None
    return spans


def peak_hz(pcm: np.ndarray, rate: int = 48_000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


async def test_tone_burst_arrives_and_silence_otherwise():
    clock = MediaClock()
    audio = AudioOut(clock)
    async with rtc_loopback(server_tracks=[audio]) as link:
        (heard,) = link.client_received
        await record(heard, 0.3)  # let the link settle
        at = clock.now() + 0.3
        start = audio.schedule(tone(1000, 0.5), TTS_RATE, at=at, last=True)
        frames = await record(heard, 1.3)
    pcm = audio_of(frames)
    spans = loud_spans(pcm)
    assert len(spans) == 1, spans
    a, b = spans[0]
    assert abs((b - a) / 48_000 - 0.5) <= 0.02
    assert abs(peak_hz(pcm[a + 2400 : b - 2400]) - 1000) < 10
    quiet = np.concatenate([pcm[: max(0, a - 960)], pcm[b + 960 :]])
    assert np.abs(quiet).max() < 0.01  # silence before and after, not noise
    assert audio.stats.speech_frames_sent in (25, 26)
    assert audio.stats.underruns == 0 and audio.stats.late_starts == 0
    assert start == pytest.approx(at, abs=1 / 48_000)


def test_schedule_places_replies_back_to_back_and_bounds_the_queue():
    clock = MediaClock()
    audio = AudioOut(clock, lead=0.1, max_ahead=2.0)
    now = clock.now()
    first = audio.schedule(tone(300, 0.5), TTS_RATE, last=True)
    assert first == pytest.approx(now + 0.1, abs=0.005)  # idle: now + lead
    second = audio.schedule(tone(300, 0.5, rate=48_000), 48_000)  # queued: right after
    assert second == pytest.approx(first + 0.5, abs=1 / 48_000)
    assert audio.queued_until == pytest.approx(first + 1.0, abs=1 / 48_000)
    with pytest.raises(ValueError, match="ahead"):
        audio.schedule(tone(300, 1.5), TTS_RATE)  # would end > 2 s ahead
    assert audio.clear() == 0.0 and audio.queued_until == 0.0  # nothing was sent


@pytest.mark.slow
async def test_av_sync_markers_30s():
    """Clicks every second in the speech and a flag in the picture at the same times."""
    fps, seconds, size = 25, 30, 128
    clock = MediaClock()
    audio = AudioOut(clock)
    black = np.zeros((size, size, 3), np.uint8)
    video_sent: dict[int, float] = {}

    def frame_sent(tag: object, media_time: float, wall: float) -> None:
        if isinstance(tag, int) and tag not in video_sent:
            video_sent[tag] = media_time

    video = VideoOut(clock, fps=fps, initial=black, on_frame_sent=frame_sent)
    atap, vtap = Tap(audio), Tap(video)

    # The "reply": speech-like hum with a 10 ms click at i + 0.6 s; flags for 200 ms there.
    speech = tone(200, seconds, amp=0.1)
    click = tone(1000, 0.01, amp=0.85)
    markers = [i + 0.6 for i in range(seconds)]
    for m in markers:
        speech[round(m * TTS_RATE) : round(m * TTS_RATE) + len(click)] = click
    flag = black.copy()
    flag[:32, :32] = 255

    def picture(j: int) -> tuple[np.ndarray, int | None]:
        """Frame ``j`` of the reply (the generator's pts j / fps) and its marker."""
        return (flag, j // fps) if 15 <= j % fps < 20 else (black, None)

    async def receive_audio(track) -> list[float]:
        onsets, quiet_since = [], 0.0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return onsets
            wall, pcm = time.monotonic(), mono(frame)
            loud = np.nonzero(np.abs(pcm) > 0.5)[0]
            if len(loud) and wall - quiet_since > 0.5:
                onsets.append(wall + loud[0] / 48_000)
                quiet_since = wall
            elif len(loud):
                quiet_since = wall

    async def receive_video(track) -> list[float]:
        onsets, flagged = [], False
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return onsets
            wall = time.monotonic()
            flag = frame.to_ndarray(format="rgb24")[4:28, 4:28].mean() > 128
            if flag and not flagged:
                onsets.append(wall)
            flagged = flag

    async with rtc_loopback(server_tracks=[atap, vtap]) as link:
        rx_audio = asyncio.create_task(receive_audio(link.client_received[0]))
        rx_video = asyncio.create_task(receive_video(link.client_received[1]))
        stalls: list[tuple[float, float]] = []
        watchdog = asyncio.create_task(watch_loop(stalls))
        await asyncio.sleep(0.5)
        piece = round(0.2 * TTS_RATE)
        start = audio.schedule(speech[:piece], TTS_RATE, at=video.next_slot(clock.now() + 0.2))
        fed, j = piece, 0
        while fed < len(speech) or j < seconds * fps:
            # A TTS keeps about a second ahead; the generator keeps the video queue at ~1 s.
            while fed < len(speech) and audio.queued_until - clock.now() < 1.0:
                chunk = speech[fed : fed + piece]
                fed += len(chunk)
                audio.schedule(chunk, TTS_RATE, last=fed >= len(speech))
            while j < seconds * fps and video.queued_until - clock.now() < 1.0:
                img, marker = picture(j)
                video.put(img, at=start + j / fps, tag=marker)
                j += 1
            await asyncio.sleep(0.05)
        await clock.sleep_until(audio.queued_until + 0.5)
        for track in link.client_received:
            track.stop()
        audio_rx, video_rx = await rx_audio, await rx_video
        watchdog.cancel()

    def index(media_or_wall: float, wall: bool = False) -> int:
        """The marker a time belongs to (receiver times are up to ~0.3 s late)."""
        t = media_or_wall - (clock.wall(start) + 0.15 if wall else start)
        return round(t - 0.6)

    # Sending side: pts and send time of each click and of each marker's first flag.
    clicks: dict[int, tuple[float, float]] = {}
    for wall, frame in atap.sent:
        loud = np.nonzero(np.abs(mono(frame)) > 0.5)[0]
        pts = (frame.pts + loud[0]) / 48_000 if len(loud) else None
        if pts is not None and index(pts) not in clicks:
            clicks[index(pts)] = (pts, wall + loud[0] / 48_000)
    flags: dict[int, tuple[float, float]] = {}
    for wall, frame in vtap.sent:
        pts = frame.pts / 90_000
        is_flag = frame.to_ndarray(format="rgb24")[4:28, 4:28].mean() > 128
        if is_flag and index(pts) not in flags:
            flags[index(pts)] = (pts, wall)
    rx_a = {index(t, wall=True): t for t in audio_rx}
    rx_v = {index(t, wall=True): t for t in video_rx}

    # Markers near an event-loop stall of the host (another busy process) are left out.
    def disturbed(i: int) -> bool:
        w = clock.wall(start + markers[i])
        return any(b > w - 0.3 and a < w + 0.4 for a, b in stalls)

    clean = [i for i in range(seconds) if not disturbed(i)]
    assert len(clean) >= seconds - 6, f"the host stalled the event loop too often: {stalls}"
    assert sorted(clicks) == list(range(seconds))  # every click went out, on its sample
    assert max(abs(clicks[i][0] - start - markers[i]) for i in clicks) < 1e-3
    assert all(i in flags and i in rx_a and i in rx_v for i in clean)
    assert all(flags[i][0] == pytest.approx(video_sent[i]) for i in clean)
    pts_ms = np.array([clicks[i][0] - flags[i][0] for i in clean]) * 1000
    send_ms = np.array([clicks[i][1] - flags[i][1] for i in clean]) * 1000
    rx_ms = np.array([rx_a[i] - rx_v[i] for i in clean]) * 1000
    lat_a = np.array([rx_a[i] - clicks[i][1] for i in clean]) * 1000
    lat_v = np.array([rx_v[i] - flags[i][1] for i in clean]) * 1000
    # aiortc's receiver holds 4 Opus packets (80 ms) but a video frame only one period.
    rx_skew_ms = 4 * 20 - 1000 / fps

    def dist(ms: np.ndarray) -> str:
        return f"min {ms.min():.1f} median {np.median(ms):.1f} max {ms.max():.1f}"

    print(
        f"\nA/V offset (audio - video) over {len(clean)} of {seconds} markers "
        f"({len(stalls)} loop stalls > 50 ms), ms:"
        f"\n  sender pts        {dist(pts_ms)}"
        f"\n  sender send time  {dist(send_ms)}"
        f"\n  receiver arrival  {dist(rx_ms)} (aiortc receiver skew {rx_skew_ms:.0f})"
        f"\n  link latency      audio {dist(lat_a)}; video {dist(lat_v)}"
        f"\n  stalls ms {[round((b - a) * 1000) for a, b in stalls]}"
        f"\n  {audio.stats}\n  {video.stats}"
    )
    assert np.abs(pts_ms).max() <= 40
    assert np.abs(send_ms).max() <= 40
    assert np.abs(rx_ms - rx_skew_ms).max() <= 40
    assert abs(np.median(rx_ms[-10:]) - np.median(rx_ms[:10])) <= 10  # no drift over 30 s
    assert audio.stats.underruns == 0 and audio.stats.late_starts == 0
    assert video.stats.dropped_full == 0


async def feed_real_time(audio: AudioOut, pcm: np.ndarray, ahead: float, stall=None) -> list[float]:
    """Schedule ``pcm`` in 200 ms pieces, each ``ahead`` s before it plays (a TTS that
    keeps real time); ``stall=(piece, seconds)`` holds one piece back. Returns the starts."""
    piece = round(0.2 * TTS_RATE)
    starts = [audio.schedule(pcm[:piece], TTS_RATE)]
    for k, i in enumerate(range(piece, len(pcm), piece), start=1):
        due = starts[0] + k * 0.2 - ahead + (stall[1] if stall and k >= stall[0] else 0)
        await audio.clock.sleep_until(due)
        starts.append(audio.schedule(pcm[i : i + piece], TTS_RATE, last=i + piece >= len(pcm)))
    return starts


async def test_no_underrun_while_the_producer_keeps_real_time():
    clock = MediaClock()
    audio = AudioOut(clock)
    async with rtc_loopback(server_tracks=[audio]) as link:
        (heard,) = link.client_received
        await record(heard, 0.3)
        frames, starts = await asyncio.gather(
            record(heard, 4.6), feed_real_time(audio, tone(440, 4.0), ahead=0.05)
        )
    assert audio.stats.underruns == 0 and audio.stats.late_starts == 0
    assert np.allclose(np.diff(starts), 0.2, atol=1e-4)  # contiguous pieces, one run
    assert audio.stats.speech_frames_sent in (200, 201)
    spans = loud_spans(audio_of(frames))
    assert len(spans) == 1 and abs((spans[0][1] - spans[0][0]) / 48_000 - 4.0) <= 0.02
    gaps = np.diff([wall for wall, _ in frames])
    assert gaps.max() < 0.1  # frames kept flowing


async def test_a_stalled_producer_underruns_once_and_the_track_keeps_sending():
    clock = MediaClock()
    audio = AudioOut(clock)
    async with rtc_loopback(server_tracks=[audio]) as link:
        (heard,) = link.client_received
        await record(heard, 0.3)
        frames, starts = await asyncio.gather(
            record(heard, 2.6), feed_real_time(audio, tone(440, 1.6), 0.05, stall=(4, 0.3))
        )
    assert audio.stats.underruns == 1 and audio.stats.late_starts == 1
    # Piece 4 came 0.3 - 0.05 s after its time and played at the next frame.
    assert 0.25 <= starts[4] - (starts[0] + 0.8) <= 0.25 + 0.03
    assert np.allclose(np.diff(starts[4:]), 0.2, atol=1e-4)  # and the run went on from there
    spans = loud_spans(audio_of(frames))
    assert len(spans) == 2, spans
    assert 0.24 <= (spans[1][0] - spans[0][1]) / 48_000 <= 0.29
    assert np.diff([wall for wall, _ in frames]).max() < 0.1  # silence, never a stall


async def test_video_repeats_the_last_frame_when_none_is_due():
    clock = MediaClock()
    grey = np.full((64, 64, 3), 128, np.uint8)
    video = VideoOut(clock, fps=25, initial=grey)
    tap = Tap(video)
    async with rtc_loopback(server_tracks=[tap]) as link:
        (seen,) = link.client_received
        await record(seen, 0.3)
        sent_before = video.stats.frames_sent
        frames = await record(seen, 2.0)  # nothing put for 2 s
        white = np.full((64, 64, 3), 255, np.uint8)
        video.put(white, at=clock.now() + 0.1)
        after = await record(seen, 0.4)
    assert video.stats.frames_sent - sent_before >= 48
    assert video.stats.repeats >= 48
    assert len(frames) >= 45
    assert np.diff([wall for wall, _ in frames]).max() < 0.1
    sent_gaps = np.diff([wall for wall, _ in tap.sent[-60:-12]])
    assert abs(sent_gaps.mean() - 0.04) < 0.003 and sent_gaps.max() < 0.06
    pts_steps = np.diff([f.pts for _, f in tap.sent[-60:]])
    assert set(pts_steps) == {3600}
    assert any(f.to_ndarray(format="rgb24").mean() > 200 for _, f in after)


async def test_video_queue_is_bounded_and_the_newest_due_frame_wins():
    clock = MediaClock()
    video = VideoOut(clock, fps=25)
    first = await video.recv()  # starts the track at the current slot
    t0 = first.pts / 90_000
    for j in range(100):  # 4 s of frames: the queue keeps the newest 2 s
        video.put(np.full((8, 8, 3), j, np.uint8), at=t0 + 5 + j / 25, tag=j)
    assert video.stats.dropped_full == 50 and video.stats.max_queue == 50
    assert video.queued_until == pytest.approx(t0 + 5 + 99 / 25)
    video.clear_after(t0 + 5 + 60 / 25)
    assert video.queued_until == pytest.approx(t0 + 5 + 60 / 25)
    sent = []
    video.on_frame_sent = lambda tag, media, wall: sent.append((tag, media))
    for j in range(5):  # late frames: only the newest due one is shown
        video.put(np.full((8, 8, 3), 200 + j, np.uint8), at=t0 - 1 + j / 25, tag=f"late{j}")
    frame = await video.recv()
    assert frame.to_ndarray(format="rgb24")[0, 0, 0] == 204
    assert video.stats.dropped_stale == 4 and sent == [("late4", pytest.approx(t0 + 0.04))]
    assert (await video.recv()).pts == frame.pts + 3600  # repeat, next slot
    assert video.stats.repeats == 2  # the initial frame and this one
    video.stop()
    with pytest.raises(MediaStreamError):
        await video.recv()


async def test_barge_in_stops_speech_and_face_within_a_frame():
    fps = 25
    clock = MediaClock()
    first: list[tuple[float, float]] = []
    audio = AudioOut(clock, on_first_speech=lambda media, wall: first.append((media, wall)))
    idle = np.zeros((64, 64, 3), np.uint8)
    talking = np.full((64, 64, 3), 255, np.uint8)
    shown: list[float] = []
    video = VideoOut(clock, fps=fps, initial=idle, on_frame_sent=lambda t, m, w: shown.append(m))
    atap, vtap = Tap(audio), Tap(video)
    async with rtc_loopback(server_tracks=[atap, vtap]) as link:
        heard_track, seen = link.client_received
        await asyncio.gather(record(heard_track, 0.3), record(seen, 0.3))
        t0 = audio.schedule(tone(1000, 2.0), TTS_RATE, at=video.next_slot(clock.now() + 0.2))
        for j in range(2 * fps):
            video.put(talking, at=t0 + j / fps, tag=j)
        rx = asyncio.gather(record(heard_track, 1.6), record(seen, 1.6))
        await clock.sleep_until(t0 + 0.7)
        heard = audio.clear()
        cut = clock.now()
        video.clear_after(cut)
        video.put(idle, at=cut)
        audio_rx, video_rx = await rx
    # At most the frame already on its way (a frame due right now may not be out yet).
    assert -0.005 <= heard - cut <= 0.021
    assert audio.queued_until == heard
    last_loud = max(
        (f.pts + np.nonzero(np.abs(mono(f)) > 0.01)[0][-1] + 1) / 48_000
        for _, f in atap.sent
        if np.abs(mono(f)).max() > 0.01
    )
    assert abs(last_loud - heard) < 0.001  # heard-until is what was sent
    assert first and abs(first[0][0] - t0) < 1e-9 and abs(first[0][1] - clock.wall(t0)) < 1e-9
    assert max(shown) <= cut + 1 / fps  # no talking frame after the next slot
    white_pts = [f.pts / 90_000 for _, f in vtap.sent if f.to_ndarray(format="rgb24").mean() > 200]
    assert max(white_pts) <= cut + 1 / fps
    spans = loud_spans(audio_of(audio_rx))
    assert len(spans) == 1 and abs((spans[0][1] - spans[0][0]) / 48_000 - (heard - t0)) <= 0.02
    white_rx = sum(f.to_ndarray(format="rgb24").mean() > 200 for _, f in video_rx)
    assert abs(white_rx - (cut - t0) * fps) <= 2
    assert audio.stats.underruns == 0


async def test_inbound_audio_is_mono_48k_with_the_same_tone():
    mic = ToneMic(440)
    async with rtc_loopback(client_tracks=[mic]) as link:
        (incoming,) = link.server_received
        chunks = []
        async for chunk in inbound_audio(incoming):
            chunks.append(chunk)
            if len(chunks) == 75:
                break
    assert all(c.sample_rate == 48_000 and c.pcm.dtype == np.float32 for c in chunks)
    assert all(c.pcm.ndim == 1 for c in chunks)
    assert chunks[0].pts == 0 and np.allclose(np.diff([c.pts for c in chunks]), 0.02)
    pcm = np.concatenate([c.pcm for c in chunks[25:]])  # past Opus' start-up
    assert abs(peak_hz(pcm) - 440) < 3
    assert 0.15 < np.sqrt(np.mean(pcm**2)) < 0.26  # 0.3 amplitude sine: rms 0.21


async def test_inbound_audio_ends_with_the_track():
    mic = ToneMic(440)
    async with rtc_loopback(client_tracks=[mic]) as link:
        (incoming,) = link.server_received
        stream = inbound_audio(incoming)
        assert (await anext(stream)).sample_rate == 48_000
        incoming.stop()
        assert [c async for c in stream] == []
