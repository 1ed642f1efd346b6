"""The soak benchmark: its measures on synthetic signals built to fail them, the A/V
measure on exactly timed frames of the real generator, and a short live run.

The synthetic tests are seeded; each threshold has the spread it was sized from
beside it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np
import pytest

from runtime.bench_soak import SoakOptions
from runtime.soak_metrics import (
    FREEZE_S,
    AvLag,
    Gap,
    Received,
    TurnRecord,
    av_lag,
    gaps,
    last_minute_row,
    minute_rows,
    verdict,
    within,
)

FPS = 25.0
# The CI soak: 3 minutes, 5-6 questions, replies repeatable (temperature 0) and short.
CI_OPTIONS = SoakOptions(
    minutes=3,
    seed=0,
    interval_s=(20.0, 30.0),
    server_env={"LIKENESS_DIALOGUE__TEMPERATURE": "0", "LIKENESS_DIALOGUE__MAX_TOKENS": "80"},
)


def arrivals(start: float, end: float, step: float, rng: np.random.Generator) -> np.ndarray:
    """Frames every ``step`` s with 0-8 ms of arrival jitter (sorted)."""
    t = np.arange(start, end, step)
    return np.sort(t + rng.uniform(0.0, 0.008, len(t)))


def syllables(t: np.ndarray, rng: np.random.Generator, length_s: float) -> np.ndarray:
    """A speech-like loudness envelope: raised-cosine syllables of 80-300 ms with pauses."""
    env = np.zeros_like(t)
    at = 0.0
    while at < length_s:
        dur = rng.uniform(0.08, 0.3)
        inside = (t >= at) & (t < at + dur)
        env[inside] += rng.uniform(0.3, 1.0) * np.sin(np.pi * (t[inside] - at) / dur) ** 2
        at += dur + rng.uniform(0.02, 0.25)
    return env


def speech_pair(seed: int, shift_s: float, length_s: float = 8.0):
    """Audio frames (20 ms) and video frames (25 fps) of one reply; the mouth shows
    each sound ``shift_s`` after it is heard (positive: the picture is late)."""
    rng = np.random.default_rng(seed)
    fine = np.arange(-1.0, length_s + 1.0, 0.001)
    env = syllables(fine, rng, length_s)
    mouth = np.convolve(env, np.ones(30) / 30, mode="same")  # lips are smoother than sound
    audio_t = arrivals(0.0, length_s, 0.02, rng)
    video_t = arrivals(0.0, length_s, 1 / FPS, rng)
    # Noise sized so the peak correlation is 0.55-0.75, as on live replies (0.5-0.7).
    rms = np.interp(audio_t, fine, env) + rng.normal(0, 0.1, len(audio_t))
    opening = 112 + 15 * np.interp(video_t - shift_s, fine, mouth) + rng.normal(0, 4, len(video_t))
    return audio_t, rms, video_t, opening


# ------------------------------------------------------------------ freezes and gaps


def test_a_300_ms_hole_is_one_freeze_and_jitter_is_none():
    rng = np.random.default_rng(0)
    t = arrivals(0.0, 10.0, 1 / FPS, rng)
    assert gaps(t, FREEZE_S) == []  # 40 ms frames with 8 ms jitter
    # A 260 ms stall after the frame at 4.0 s: the next frame comes 300 ms after it.
    at = int(np.searchsorted(t, 4.0))
    holed = t + np.where(np.arange(len(t)) >= at, 0.26, 0.0)
    found = gaps(holed, FREEZE_S)
    assert len(found) == 1
    assert found[0].start == holed[at - 1]
    assert 0.29 <= found[0].length <= 0.31  # 40 ms + 260 ms, +-8 ms of jitter
    late = t + np.where(np.arange(len(t)) >= at, 0.15, 0.0)  # 190 ms: a late frame
    assert gaps(late, FREEZE_S) == []


def test_a_freeze_is_the_sender_s_only_when_the_sent_pts_jump_too():
    rec = three_minutes()
    t = np.asarray(rec.video_t)
    pts = t - t[0]  # sent at 25 fps
    # Frames 2000-: arrive 300 ms late with steady pts (the network or the client)...
    t[2000:] += 0.26
    # ...frames 3000-: the sender skipped 300 ms (pts jump as far as the arrivals).
    t[3000:] += 0.26
    pts[3000:] += 0.26
    rec.video_t, rec.video_pts = list(t), list(pts)
    rows = minute_rows(rec, 3)
    assert sum(r["freezes"] for r in rows) == 2
    assert [r["freezes_at_sender"] for r in rows] == [0, 0, 1]  # frame 3000 is at 2 min


def test_audio_gaps_count_only_while_a_reply_plays():
    found = [Gap(2.0, 0.3), Gap(10.0, 0.5)]
    assert within(found, [(9.0, 12.0)]) == [Gap(10.0, 0.5)]
    assert within(found, [(2.2, 3.0)]) == [Gap(2.0, 0.3)]  # overlaps the reply's start
    assert within(found, [(3.0, 9.0)]) == []


# ------------------------------------------------------------------ A/V offset


@pytest.mark.parametrize("shift_ms", [80.0, -60.0, 0.0])
def test_a_known_shift_is_measured_within_20_ms(shift_ms):
    # Seeds 0-9 measured 72.8-84.2 at 80 ms, -66.1 to -52.1 at -60 ms, -6.1 to 9.5 at 0
    # (peak correlation 0.55-0.75): +-20 ms holds with room.
    for seed in range(10):
        audio_t, rms, video_t, opening = speech_pair(seed, shift_ms / 1000)
        lag = av_lag(audio_t, rms, video_t, opening, (0.5, 7.5))
        assert lag is not None
        assert abs(1000 * lag.lag_s - shift_ms) <= 20, (seed, lag)


def test_the_offset_reads_only_the_window_and_gives_what_the_whole_run_gives():
    # An hour's arrivals are 270 000 entries: av_lag must not convert them all for each
    # reply (that held the soak client's loop up 0.15-0.5 s a minute, read as freezes),
    # and reading only the window must not change the answer.
    audio_t, rms, video_t, opening = speech_pair(4, 0.05)
    lag = av_lag(list(audio_t), list(rms), list(video_t), list(opening), (0.5, 7.5))
    hour_a = np.arange(-3600.0, -1.0, 0.02)
    hour_v = np.arange(-3600.0, -1.0, 1 / FPS)
    later_a, later_v = hour_a + 3610.0, hour_v + 3610.0
    noise = np.random.default_rng(0)
    long = av_lag(
        [*hour_a, *audio_t, *later_a],
        [*noise.random(len(hour_a)), *rms, *noise.random(len(later_a))],
        [*hour_v, *video_t, *later_v],
        [*noise.random(len(hour_v)), *opening, *noise.random(len(later_v))],
        (0.5, 7.5),
    )
    assert lag is not None and long == lag
    read = _Counted(long_a := [*hour_a, *audio_t, *later_a])
    av_lag(read, [0.0] * len(long_a), list(video_t), list(opening), (0.5, 7.5))
    assert 0 < read.reads < 0.05 * len(long_a)  # the window's 350 samples, not the hour


class _Counted(Sequence):
    """A list that counts the entries read from it."""

    def __init__(self, items: list[float]) -> None:
        self.items, self.reads = items, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        got = self.items[index]
        self.reads += len(got) if isinstance(index, slice) else 1
        return got


def test_a_mouth_that_does_not_follow_the_voice_gives_no_offset():
    audio_t, rms, video_t, _ = speech_pair(3, 0.0)
    # Six unrelated noise mouths peaked at 0.06-0.24, under the 0.4 floor.
    unrelated = np.random.default_rng(1).normal(size=len(video_t))
    assert av_lag(audio_t, rms, video_t, unrelated, (0.5, 7.5)) is None
    still = np.full(len(video_t), 112.0)
    assert av_lag(audio_t, rms, video_t, still, (0.5, 7.5)) is None
    assert av_lag(audio_t, rms, video_t, rms[: len(video_t)], (0.5, 0.9)) is None  # too short


def test_an_offset_beyond_the_range_or_an_ambiguous_match_gives_none():
    audio_t, rms, video_t, opening = speech_pair(2, 0.45)  # beyond the 300 ms searched
    assert av_lag(audio_t, rms, video_t, opening, (0.5, 7.5)) is None
    assert av_lag(audio_t, rms, video_t, opening, (0.5, 7.5), max_lag_s=0.6) is not None
    # Syllables exactly every 220 ms: lags a syllable apart match as well as the true one.
    t = np.arange(0.0, 8.0, 0.02)
    beat = np.sin(np.pi * t / 0.22) ** 2
    video_t = np.arange(0.0, 8.0, 1 / FPS)
    mouth = np.sin(np.pi * (video_t - 0.05) / 0.22) ** 2
    assert av_lag(t, beat, video_t, mouth, (0.5, 7.5)) is None
    assert av_lag(t, beat, video_t, mouth, (0.5, 7.5), min_margin=0.0) is not None


# ------------------------------------------------------------------ per minute and targets


def three_minutes(hole_at: float | None = None) -> Received:
    """A clean 3-minute record: 25 fps, 20 ms audio, RSS samples every 5 s."""
    rng = np.random.default_rng(7)
    video = arrivals(100.0, 280.0, 1 / FPS, rng)
    if hole_at is not None:
        video = video[(video < hole_at) | (video >= hole_at + 0.3)]
    audio = arrivals(100.0, 280.0, 0.02, rng)
    rec = Received(start=float(video[0]))
    rec.video_t, rec.mouth = list(video), [0.0] * len(video)
    rec.audio_t, rec.envelope = list(audio), [0.0] * len(audio)
    rec.samples = [(100.0 + s, 1000.0, 20) for s in range(0, 180, 5)]
    return rec


def turn(at: float, latency_ms: float, av_ms: float | None = None) -> TurnRecord:
    return TurnRecord(
        asked_at=at - 2.0,
        voice_end=at,
        first_audio_at=at + latency_ms / 1000,
        stages_ms={"first_audio_sent": latency_ms - 100},
        reply=(at + latency_ms / 1000, at + latency_ms / 1000 + 5),
        av=None if av_ms is None else AvLag(av_ms / 1000, 0.7),
    )


def test_minute_rows_put_each_event_in_its_minute():
    rec = three_minutes(hole_at=130.0)  # minute 1 is [100, 160)
    rec.turns = [turn(110.0, 2000, 10), turn(140.0, 3000, 20), turn(250.0, 2500, 30)]
    rec.samples[-1] = (275.0, 1030.0, 21)
    rec.samples[30] = (250.0, 1000.0, 26)  # a reply in flight: more tasks for a while
    rec.samples[13:24] = [(x[0], x[1], 19) for x in rec.samples[13:24]]  # minute 2: 19
    rec.stalls = [(130.0, 0.3), (200.0, 0.15), (210.0, 0.5)]
    rows = minute_rows(rec, 3)
    assert [r["client_stall_ms"] for r in rows] == pytest.approx([300, 500, 0])
    assert [r["freezes"] for r in rows] == [1, 0, 0]
    assert rows[0]["max_gap_ms"] >= 300 and rows[1]["max_gap_ms"] < 60
    assert [r["turns"] for r in rows] == [2, 0, 1]
    assert rows[0]["turn_p50_ms"] == pytest.approx(2500, abs=1)
    assert rows[0]["server_first_audio_sent_p50_ms"] == pytest.approx(2400, abs=1)
    assert rows[0]["av_offset_ms"] == pytest.approx(15, abs=0.01)
    assert math.isnan(rows[1]["turn_p50_ms"])
    assert 24.5 <= rows[1]["fps"] <= 25.1 and rows[0]["fps"] < rows[1]["fps"]
    assert [r["rss_mb"] for r in rows] == [1000.0, 1000.0, 1030.0]
    assert [r["tasks"] for r in rows] == [20, 19, 20]  # the fewest in each minute
    assert all(math.isnan(r["other_cpu"]) for r in rows)  # no CPU samples: unknown


def test_minute_rows_say_what_other_programs_used():
    """A slow minute can be told from a loaded machine: the other programs' mean cores
    and the stolen ones, per minute; a sample that could not be read (NaN) is left out."""
    rec = three_minutes()
    rec.cpu = [(100.0 + s, 0.1, 0.0) for s in range(0, 180, 5)]
    rec.cpu[14:20] = [(t, 1.3, 0.2) for t, _, _ in rec.cpu[14:20]]  # minute 2: a build ran
    rec.cpu[25] = (rec.cpu[25][0], math.nan, math.nan)
    rows = minute_rows(rec, 3)
    assert [r["other_cpu"] for r in rows] == pytest.approx([0.1, 0.7, 0.1])  # 6 of 12 at 1.3
    assert [r["steal_cpu"] for r in rows] == pytest.approx([0.0, 0.1, 0.0])


def test_each_minute_s_row_from_its_own_data_is_the_whole_run_s_row():
    """The progress row is computed from one minute's data (its cost must not grow with
    the run: it runs in the client's event loop), and says the same."""
    rec = three_minutes(hole_at=130.0)
    rec.video_t = [t for t in rec.video_t if not 219.9 <= t < 220.3]  # minute 3 starts at 220
    rec.video_pts = rec.video_t[:]
    rec.turns = [turn(110.0, 2000, 10), turn(140.0, 3000, 20), turn(250.0, 2500, 30)]
    rec.stalls = [(130.0, 0.3), (200.0, 0.15), (210.0, 0.5)]
    whole = minute_rows(rec, 3)
    for m in (1, 2, 3):
        part = last_minute_row(rec, m)
        assert part.keys() == whole[m - 1].keys()
        for key, value in whole[m - 1].items():
            assert part[key] == pytest.approx(value, nan_ok=True), (m, key)
    assert [r["freezes"] for r in whole] == [1, 1, 0]  # the edge hole is minute 2's


def test_a_hole_in_the_first_seconds_is_set_up_not_a_freeze():
    rec = three_minutes()
    rec.video_t = [t for t in rec.video_t if not rec.start + 0.5 <= t < rec.start + 0.9]
    rows = minute_rows(rec, 3)
    judged = verdict(rec, rows)
    assert judged["summary"]["freezes"] == 0
    assert judged["summary"]["startup_gaps_over_200ms"] == 1
    assert judged["targets"]["no_freezes"] is True
    late = three_minutes(hole_at=200.0)
    assert verdict(late, minute_rows(late, 3))["targets"]["no_freezes"] is False


def test_video_that_stops_is_a_freeze_until_the_end_and_an_ended_session_fails():
    rec = three_minutes()
    rec.end = rec.start + 180.0
    rec.video_t = [t for t in rec.video_t if t < rec.start + 100.0]  # stops in minute 2
    rec.ended = "client gone"
    rows = minute_rows(rec, 3)
    assert [r["freezes"] for r in rows] == [0, 1, 0]
    assert rows[1]["max_gap_ms"] >= 79_000 and rows[2]["fps"] == 0
    judged = verdict(rec, rows)
    assert judged["targets"]["no_freezes"] is False
    assert judged["targets"]["session_lasted"] is False
    assert judged["summary"]["session_ended_early"] == "client gone"
    clean = three_minutes()
    clean.end = clean.video_t[-1] + 0.03
    assert verdict(clean, minute_rows(clean, 3))["targets"] == {
        "session_lasted": True,
        "no_freezes": True,
        "av_in_sync": None,
        "rss_flat": True,
        "turns_flat": None,
    }


def test_a_gap_after_the_run_has_ended_is_not_a_freeze():
    # The 60-minute run of 2026-12-07 16:52 counted one freeze from 3599.99 s to
    # 3600.21 s: frames still arrived while the client ran its final analysis.
    rec = three_minutes()
    rec.end, rec.video_pts = rec.start + 150.0, list(rec.video_t)  # pts steady as sent
    cut = bisect.bisect_right(rec.video_t, rec.end)
    rec.video_t = [*rec.video_t[:cut], *(t + 0.25 for t in rec.video_t[cut:])]
    rec.video_pts = [*rec.video_pts[:cut], *(t + 0.25 for t in rec.video_pts[cut:])]
    rows = minute_rows(rec, 3)
    assert sum(r["freezes"] + r["freezes_at_sender"] for r in rows) == 0
    assert rows[2]["max_gap_ms"] < 100
    rec.end += 0.3  # the same gap inside the run is one, at the sender
    rows = minute_rows(rec, 3)
    assert [r["freezes"] for r in rows] == [0, 0, 1]
    assert [r["freezes_at_sender"] for r in rows] == [0, 0, 1]


@pytest.mark.parametrize(
    ("end_mb", "ok"), [(1040.0, True), (1049.0, True), (1060.0, False), (1500.0, False)]
)
def test_rss_growth_is_judged_after_the_warm_up_minute(end_mb, ok):
    rec = three_minutes()
    # Start-up memory is not growth: minute 1 ends at 1000 MB, whatever came before.
    rec.samples[0] = (100.0, 600.0, 20)
    rec.samples[-1] = (275.0, end_mb, 20)
    judged = verdict(rec, minute_rows(rec, 3))
    assert judged["targets"]["rss_flat"] is ok
    assert judged["summary"]["rss_growth_pct"] == pytest.approx(100 * (end_mb / 1000 - 1))


def test_rss_growth_needs_two_minutes():
    rec = three_minutes()
    rows = minute_rows(rec, 1)
    assert verdict(rec, rows)["targets"]["rss_flat"] is None


@pytest.mark.parametrize(
    ("latencies", "ok"),
    [
        # The cold first turn (4.1 s) is left out of the trend.
        ([4100, 1700, 1800, 1600, 1900, 1700, 1800], True),
        # Issue 14's regression: ~2.4 s, then 5.1-6.2 s from turn 8.
        ([4100, 2400, 2300, 2500, 2400, 2400, 2500, 5100, 5800, 6200], False),
        # Three early and three late turns after the first are needed: five are too few.
        ([4100, 1700, 1800, 1600, 1900, 1700], None),
    ],
)
def test_the_turn_trend_flags_slower_every_turn(latencies, ok):
    rec = three_minutes()
    rec.turns = [turn(105.0 + 15 * i, ms) for i, ms in enumerate(latencies)]
    judged = verdict(rec, minute_rows(rec, 3))
    assert judged["targets"]["turns_flat"] is ok
    assert judged["summary"]["first_turn_ms"] == pytest.approx(4100)
    # Each turn's first audio was sent 100 ms before the client heard it.
    assert judged["summary"]["client_after_server_sent_p50_ms"] == pytest.approx(100)


@pytest.mark.parametrize(
    ("offsets", "bias_ms", "ok"),
    [
        ([10, 5, 12, 8, 15, 9], 0.0, True),
        ([10, 5, 12, 60, 75, 80], 0.0, False),  # drifts apart by the end
        ([-50, -45, -55, -50, -52, -48], 0.0, False),  # out of sync from the start
        ([67, 62, 72, 70, 64, 66], 67.0, True),  # the generator's own lead taken out
        ([None, None, None], 0.0, None),  # nothing measurable
    ],
)
def test_av_sync_is_judged_at_the_start_and_at_the_end(offsets, bias_ms, ok):
    rec = three_minutes()
    rec.av_bias_s = bias_ms / 1000
    rec.turns = [turn(105.0 + 25 * i, 2000, ms) for i, ms in enumerate(offsets)]
    assert verdict(rec, minute_rows(rec, 3))["targets"]["av_in_sync"] is ok


def test_the_tables_show_every_column_and_each_target_s_verdict():
    from runtime.bench_soak import (
        MINUTE_COLUMNS,
        flat_metrics,
        minute_table,
        progress_line,
        target_table,
    )

    rec = three_minutes(hole_at=200.0)
    rec.end = rec.video_t[-1] + 0.03
    rec.turns = [turn(105.0 + 20 * i, 2000, 10) for i in range(7)]
    rows = minute_rows(rec, 3)
    cells = minute_table(rows)
    assert len(cells) == 3 and all(len(r) == len(MINUTE_COLUMNS) for r in cells)
    assert cells[1][MINUTE_COLUMNS.index("freezes")] == "1"
    assert "1 freezes" in progress_line(rows[1], 3)
    result = {"metrics": flat_metrics(verdict(rec, rows), delayed=0)}
    verdicts = {row[0]: row[-1] for row in target_table(result)}
    assert verdicts == {
        "session lasted": "pass",
        "no freezes (>200 ms)": "fail",
        "A/V offset start / end": "pass",
        "RSS growth after minute 1": "pass",
        "turn latency, late / early": "pass",
    }


# ------------------------------------------------------------------ the real generator


@pytest.fixture(scope="module")
def lead(piper_tts):
    from runtime.soak_client import lead_signals

    return lead_signals(piper_tts)


@pytest.mark.slow
def test_the_mouth_probe_follows_the_real_face_s_voice(lead):
    """On exactly timed frames of the procedural face the measure finds it in sync, and
    a picture delayed by 80 ms is measured 80 ms later."""
    audio_t, envelope, video_t, mouth = lead
    window = (0.0, float(audio_t[-1]))
    synced = av_lag(audio_t, envelope, video_t, mouth, window)
    # 16.9 ms (corr 0.50), then 96.9 and -43.1 ms shifted, in five runs (identical:
    # Piper without noise). The face anticipates sounds on purpose; the soak
    # subtracts this lead from what it measures live.
    assert synced is not None and synced.corr > 0.4
    assert abs(synced.lag_s) <= 0.04
    late = av_lag(audio_t, envelope, video_t + 0.08, mouth, window)
    assert late is not None
    assert abs(late.lag_s - synced.lag_s - 0.08) <= 0.02
    early = av_lag(audio_t, envelope, video_t - 0.06, mouth, window)
    assert early is not None
    assert abs(early.lag_s - synced.lag_s + 0.06) <= 0.02


# ------------------------------------------------------------------ a live soak


# Sized from five 3-minute runs on this 2-core machine while other work kept its load
# at 8-23: every minute delivered 14.3-23.6 fps, the longest gap was 0.81-1.44 s,
# RSS grew 1.6-4.5 % after minute 1, all 7 questions were answered in each. The same
# runs had 26-128 freezes and 0-2 replies clean enough to measure A/V, so those two
# targets are printed, not asserted, here: the documented runs judge them. The bench's
# RSS target is 5 %; CI allows 1.5x the worst growth seen so that load cannot fail it.
FPS_FLOOR = 10.0
MAX_GAP_MS = 3000.0
RSS_GROWTH_CEILING_PCT = 7.0


@pytest.mark.slow
def test_a_three_minute_soak_meets_what_two_cores_can_hold():
    """The CI soak: a fresh server, the scripted client, 3 minutes (~5 min in all)."""
    from runtime.bench_soak import bench_soak, target_table

    minutes: list[dict] = []
    result = bench_soak(CI_OPTIONS, on_minute=minutes.append)
    m, rows = result["metrics"], result["runs"]["minutes"]
    for row in target_table(result):
        print(" | ".join(row))
    assert m["session_ended_early"] == "", result["runs"]["server_log_tail"]
    assert [r["minute"] for r in minutes] == [1, 2, 3] and len(rows) == 3
    assert m["turns"] >= 5 and m["turns_answered"] == m["turns"]
    assert min(r["fps"] for r in rows) >= FPS_FLOOR
    assert m["max_gap_ms"] <= MAX_GAP_MS
    assert m["rss_growth_pct"] <= RSS_GROWTH_CEILING_PCT
    # The fewest open tasks in a minute (between replies) does not grow with the turns
    # (one task left behind per turn would add 6); one more for a between-turns job.
    assert m["tasks_end"] <= m["tasks_warm"] + 1


def test_bad_soak_options_are_refused_with_their_name():
    from typer.testing import CliRunner

    from runtime.cli import app

    result = CliRunner().invoke(app, ["bench", "soak", "--minutes", "0"])
    assert result.exit_code == 2 and "--minutes" in result.output
    with pytest.raises(ValueError, match="minutes"):
        SoakOptions(minutes=0)
    with pytest.raises(ValueError, match="interval_s"):
        SoakOptions(minutes=3, interval_s=(30.0, 20.0))
    with pytest.raises(ValueError, match="interval_s"):
        SoakOptions(minutes=3, interval_s=(1.0, 2.0))
    with pytest.raises(ValueError, match="server_nice"):
        SoakOptions(minutes=3, server_nice=20)
    with_url = CliRunner().invoke(
        app, ["bench", "soak", "--url", "http://127.0.0.1:9", "--server-nice", "5"]
    )
    assert with_url.exit_code != 0 and "--server-nice" in with_url.output
