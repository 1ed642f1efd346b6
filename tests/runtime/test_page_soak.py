"""The kiosk soak (``likeness bench soak --page kiosk``): its measures on synthetic
``getStats`` readings built to fail each target, the fake microphone's question
schedule and WAV, and one short live run of the kiosk page in headless Chromium.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime.page_soak import PageSoakOptions, check_browser, write_mic_wav
from runtime.page_soak_metrics import (
    MINUTE_COLUMNS,
    PageTurn,
    StatsSample,
    assign_events,
    minute_rows,
    minute_table,
    plan_questions,
    target_table,
    verdict,
)
from runtime.soak_client import Question

FPS = 25
AUDIO_RATE = 48_000


def healthy(minutes: int, every_s: float = 5.0, t0: float = 100.0) -> list[StatsSample]:
    """A reading every ``every_s`` of a clean session: 25 fps, no freeze, no concealment,
    50 ms in the jitter buffer, 1400 MB and 17 tasks on the server."""
    out = []
    for k in range(round(60 * minutes / every_s) + 1):
        s = k * every_s
        emitted = round(AUDIO_RATE * s)
        out.append(
            StatsSample(
                t=t0 + s,
                session_id="s1",
                frames_decoded=round(FPS * s),
                fps=float(FPS),
                samples_received=emitted,
                jitter_delay_s=0.05 * emitted,
                jitter_emitted=emitted,
                rss_mb=1400.0,
                tasks=17,
            )
        )
    return out


def changed(samples: list[StatsSample], after_t: float, **fields) -> list[StatsSample]:
    """The readings from ``after_t`` on with ``fields`` replaced, each value a function
    of the reading (or a constant)."""
    out = []
    for s in samples:
        if s.t >= after_t:
            new = {k: (v(s) if callable(v) else v) for k, v in fields.items()}
            s = dataclasses.replace(s, **new)
        out.append(s)
    return out


def turns_every(start: float, gap_s: float, count: int, answered: int) -> list[PageTurn]:
    """``count`` questions ``gap_s`` apart from ``start + 15``; the first ``answered``
    of them answered 8 s after they were asked."""
    out = []
    for k in range(count):
        at = start + 15 + k * gap_s
        speaking = at + 8 if k < answered else None
        out.append(PageTurn(at, at + 3, f"question {k}", "words", at + 5, speaking, 2))
    return out


def judge(samples, turns=(), ended=""):
    rows = minute_rows(samples, turns, samples[0].t, round((samples[-1].t - samples[0].t) / 60))
    return rows, verdict(samples, rows, turns, ended)


# ------------------------------------------------------------------ the targets


def test_a_clean_session_passes_every_target_with_its_figures():
    samples = healthy(3)
    rows, judged = judge(samples, turns_every(samples[0].t, 30, 5, 5))
    assert [r["minute"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["fps"] == pytest.approx(FPS)
        assert row["freezes"] == 0 and row["video_stopped_s"] == 0
        assert row["concealed_pct"] == 0 and row["jitter_buffer_ms"] == pytest.approx(50)
        assert row["rss_mb"] == 1400 and row["tasks"] == 17
    assert [r["turns"] for r in rows] == [2, 2, 1]
    assert judged["targets"] == {
        "session_lasted": True,
        "no_freezes": True,
        "rss_flat": True,
        "all_answered": True,
    }
    assert judged["summary"]["turns_answered"] == 5 and judged["summary"]["sessions"] == 1


def test_a_freeze_counted_by_the_browser_fails_in_its_minute():
    samples = healthy(3)
    t0 = samples[0].t
    # Chromium counted one 300 ms freeze in minute 2 (read at 75 s).
    frozen = changed(samples, t0 + 75, freeze_count=1, freezes_s=0.3)
    rows, judged = judge(frozen)
    assert [r["freezes"] for r in rows] == [0, 1, 0]
    assert rows[1]["freeze_ms"] == pytest.approx(300)
    assert judged["summary"]["freezes"] == 1
    assert judged["targets"]["no_freezes"] is False


def test_video_that_stops_is_caught_though_the_browser_counts_no_freeze():
    samples = healthy(2)
    t0 = samples[0].t
    # No frame after 110 s: getStats counts a freeze only when the late frame comes.
    stopped = changed(samples, t0 + 110, frames_decoded=FPS * 110, fps=0.0)
    rows, judged = judge(stopped)
    assert rows[1]["video_stopped_s"] == pytest.approx(10)
    assert rows[1]["fps"] == pytest.approx(FPS * 50 / 60)
    assert judged["summary"]["freezes"] == 0
    assert judged["targets"]["no_freezes"] is False


def test_a_reconnect_fails_the_session_and_its_restarted_counters_stay_sane():
    samples = healthy(2)
    t0 = samples[0].t
    # At 65 s a new peer connection: its counters start again from 0 (2 s of it seen).
    again = changed(
        samples,
        t0 + 65,
        session_id="s2",
        reconnects=1,
        frames_decoded=lambda s: round(FPS * (s.t - t0 - 63)),
        samples_received=lambda s: round(AUDIO_RATE * (s.t - t0 - 63)),
        jitter_emitted=lambda s: round(AUDIO_RATE * (s.t - t0 - 63)),
        jitter_delay_s=lambda s: 0.05 * round(AUDIO_RATE * (s.t - t0 - 63)),
    )
    rows, judged = judge(again)
    assert rows[1]["fps"] == pytest.approx(FPS * 57 / 60)  # 3 s lost in the reconnect
    assert all(r["fps"] >= 0 and r["concealed_pct"] >= 0 for r in rows)
    assert rows[1]["reconnects"] == 1
    assert judged["summary"]["sessions"] == 2 and judged["summary"]["reconnects"] == 1
    assert judged["targets"]["session_lasted"] is False


def test_a_session_the_server_ended_fails_though_nothing_else_changed():
    _, judged = judge(healthy(2), ended="idle timeout")
    assert judged["targets"]["session_lasted"] is False
    assert judged["summary"]["session_ended_early"] == "idle timeout"


def test_audio_concealment_is_the_share_of_samples_the_browser_made_up():
    samples = healthy(2)
    t0 = samples[0].t
    # 2.4 s of audio concealed in minute 2 (of 60 s received): 4 %.
    lossy = changed(samples, t0 + 90, concealed=round(2.4 * AUDIO_RATE))
    rows, judged = judge(lossy)
    assert rows[0]["concealed_pct"] == 0
    assert rows[1]["concealed_pct"] == pytest.approx(4.0)
    assert judged["summary"]["concealed_pct"] == pytest.approx(2.0)


@pytest.mark.parametrize(("end_mb", "ok"), [(1450.0, True), (1500.0, False)])
def test_rss_growth_is_judged_after_the_warm_up_minute(end_mb, ok):
    samples = healthy(3)
    t0 = samples[0].t
    # A big warm-up in minute 1 does not count; 1400 -> 1450 is +3.6 %, -> 1500 +7.1 %.
    grown = changed(samples, t0, rss_mb=lambda s: 900.0 if s.t < t0 + 30 else 1400.0)
    grown = changed(grown, t0 + 150, rss_mb=end_mb)
    _, judged = judge(grown)
    assert judged["summary"]["rss_warm_mb"] == 1400.0
    assert judged["targets"]["rss_flat"] is ok


def test_rss_growth_needs_two_minutes_and_a_known_rss():
    _, short = judge(healthy(1))
    assert short["targets"]["rss_flat"] is None
    _, by_url = judge(changed(healthy(2), 0, rss_mb=math.nan, tasks=-1))
    assert by_url["targets"]["rss_flat"] is None and by_url["summary"]["tasks_end"] == -1


def test_an_unanswered_question_fails_and_no_question_is_not_judged():
    samples = healthy(3)
    _, judged = judge(samples, turns_every(samples[0].t, 30, 5, 4))
    assert judged["summary"]["turns_answered"] == 4
    assert judged["targets"]["all_answered"] is False
    _, silent = judge(samples)
    assert silent["targets"]["all_answered"] is None


def test_page_events_go_to_the_question_they_followed():
    turns = [PageTurn(10.0, 13.0, "a"), PageTurn(40.0, 43.0, "b"), PageTurn(70.0, 73.0, "c")]
    speaking = {"type": "state", "state": "speaking"}
    events = [
        (5.0, speaking),  # before any question: nobody's
        (15.0, {"type": "transcript", "text": "partial", "final": False}),
        (16.0, {"type": "transcript", "text": "a said", "final": True}),
        (18.0, speaking),
        (19.0, {"type": "reply", "text": "one"}),
        (20.0, {"type": "reply", "text": "two"}),
        (21.0, {"type": "metrics", "stages_ms": {"first_audio_sent": 900.0}}),
        # b's reply comes after c was asked: c's, and b is unanswered
        (71.0, speaking),
        (72.0, {"type": "interrupted", "heard": "x"}),
    ]
    assign_events(turns, events)
    a, b, c = turns
    assert (a.transcript, a.transcript_at, a.speaking_at, a.replies, a.server_ms) == (
        "a said",
        16.0,
        18.0,
        2,
        {"first_audio_sent": 900.0},
    )
    assert not b.answered and b.transcript is None and b.replies == 0
    assert c.answered and c.interrupted


def test_a_reading_from_the_page_tolerates_missing_stats():
    page = {
        "sessionId": "abc",
        "reconnects": 2,
        "video": {"framesDecoded": 250, "freezeCount": 1, "totalFreezesDuration": 0.25},
        "audio": None,  # no audio receiver yet
    }
    s = StatsSample.from_page(1.0, page, 1400.0, 17)
    assert (s.session_id, s.reconnects, s.frames_decoded, s.freeze_count) == ("abc", 2, 250, 1)
    assert s.freezes_s == 0.25 and math.isnan(s.fps) and s.samples_received == 0
    empty = StatsSample.from_page(2.0, {}, math.nan, -1)
    assert empty.session_id == "" and empty.frames_decoded == 0


def test_the_tables_show_every_column_and_each_target_s_verdict():
    samples = changed(healthy(2), 160.0, freeze_count=3, freezes_s=0.9)
    rows, judged = judge(samples, turns_every(samples[0].t, 30, 3, 3))
    cells = minute_table(rows)
    assert len(cells) == 2 and all(len(r) == len(MINUTE_COLUMNS) for r in cells)
    word = {True: "pass", False: "fail", None: "n/a"}
    metrics = judged["summary"] | {f"target_{k}": word[v] for k, v in judged["targets"].items()}
    table = {row[0]: row[3] for row in target_table({"metrics": metrics})}
    assert table == {
        "session lasted": "pass",
        "no freezes (getStats)": "fail",
        "RSS growth after minute 1": "pass",
        "every question answered": "pass",
    }


# ------------------------------------------------------------------ the microphone


def test_the_questions_come_at_seeded_times_20_to_40_s_apart():
    plan = plan_questions(seed=3, count=16, length_s=600.0)
    assert plan == plan_questions(seed=3, count=16, length_s=600.0)
    assert plan != plan_questions(seed=4, count=16, length_s=600.0)
    times = [at for at, _ in plan]
    assert times[0] == 15.0 and times[-1] <= 600.0 - 20.0
    assert all(20.0 <= b - a <= 40.0 for a, b in zip(times, times[1:], strict=False))
    assert 600.0 - 20.0 - times[-1] < 40.0  # no room left for one more
    assert [k for _, k in plan] == [k % 16 for k in range(len(plan))]
    longer = plan_questions(seed=0, count=4, length_s=3600.0)
    assert len(longer) >= 3540 // 40 and {k for _, k in longer} == {0, 1, 2, 3}


def burst(seconds: float, rate: int = 22_050) -> Question:
    """A "question" that is loud from its first sample to its last (Piper's rate)."""
    pcm = np.full(round(seconds * rate), 0.5, np.float32)
    return Question(f"{seconds} s", pcm, rate, seconds, "burst")


def test_the_microphone_wav_says_each_question_at_its_planned_time(tmp_path: Path):
    questions = [burst(1.5), burst(2.5)]
    plan = plan_questions(seed=1, count=2, length_s=180.0)
    wav = tmp_path / "mic.wav"
    size = write_mic_wav(wav, plan, questions, 16_000, 200.0)
    pcm, rate = sf.read(wav, dtype="float32")
    info = sf.info(wav)
    assert (rate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
    assert len(pcm) == 200 * rate and size == 44 + 2 * len(pcm)
    loud = np.abs(pcm) > 0.25  # resampling rings for a few samples at each edge
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
    starts, ends = edges[::2] + 1, edges[1::2] + 1
    assert len(starts) == len(plan)
    for (at_s, k), begin, end in zip(plan, starts, ends, strict=True):
        assert begin / rate == pytest.approx(at_s, abs=0.002)
        assert (end - begin) / rate == pytest.approx(questions[k].voice_end_s, abs=0.002)
    with pytest.raises(ValueError, match="overlaps"):
        write_mic_wav(tmp_path / "bad.wav", [(1.0, 1), (2.0, 0)], questions, 16_000, 10.0)


# ------------------------------------------------------------------ options


def test_bad_page_soak_options_are_refused_with_their_name(tmp_path: Path):
    from typer.testing import CliRunner

    from runtime.cli import app
    from runtime.errors import InputError

    for bad, name in [
        ({"minutes": 0}, "minutes"),
        ({"minutes": 1, "page": "chat"}, "page"),
        ({"minutes": 1, "interval_s": (30.0, 20.0)}, "interval_s"),
        ({"minutes": 1, "server_nice": 20}, "server_nice"),
        ({"minutes": 1, "mic_rate": 4000}, "mic_rate"),
    ]:
        with pytest.raises(ValueError, match=name):
            PageSoakOptions(**bad)
    with pytest.raises(InputError, match="apt-get install chromium"):
        check_browser(tmp_path / "no-chromium")
    runner = CliRunner()
    unknown = runner.invoke(app, ["bench", "soak", "--page", "chat"])
    assert unknown.exit_code == 2 and "--page" in unknown.output
    lab = runner.invoke(app, ["bench", "soak", "--page", "kiosk", "--via-turn"])
    assert lab.exit_code == 2 and "--via-turn" in lab.output


# ------------------------------------------------------------------ a live kiosk soak


# Sized from seven 2-minute runs on this 2-core machine (2026-12-07; load average 0.2-7
# from other work and the run itself): the session lasted in every one (one session id,
# no reconnect), all 4 questions were transcribed and answered (in the first six the
# companion spoke 1.9-6.2 s after a question's end), no page error; each minute decoded
# 22.1-25.0 fps
# (the runs' worst minutes: 24.3, 22.1, 24.1, 24.6, 23.8, 24.8, 23.2). The floor leaves room for
# a load those runs did not see (the aiortc soak's is 10 fps at load 8-23). The same runs
# counted 0-10 freezes (0, 10, 3, 0, 1, 0, 3; 0-3.3 s in all), 0.1-4.2 % of the audio
# concealed and RSS growth of 0.8-7.7 % after minute 1 (two minutes are mostly warm-up):
# printed, not asserted; the documented runs judge them.
FPS_FLOOR = 15.0


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="apt-get install chromium")
def test_a_two_minute_kiosk_soak_meets_what_two_cores_can_hold():
    """A fresh server, the kiosk page in headless Chromium, 2 minutes (~3-4 min in all)."""
    from runtime.page_soak import bench_page_soak

    opts = PageSoakOptions(
        minutes=2,
        seed=0,
        interval_s=(20.0, 30.0),
        server_env={"LIKENESS_DIALOGUE__TEMPERATURE": "0", "LIKENESS_DIALOGUE__MAX_TOKENS": "80"},
    )
    minutes: list[dict] = []
    result = bench_page_soak(opts, on_minute=minutes.append)
    m, rows = result["metrics"], result["runs"]["minutes"]
    for row in target_table(result):
        print(" | ".join(row))
    for turn in result["runs"]["turns"]:
        print(turn)
    print({k: m[k] for k in ("fps_min", "freezes", "freeze_ms", "concealed_pct", "rss_growth_pct")})
    assert m["session_ended_early"] == "", result["runs"]["server_log_tail"]
    assert m["sessions"] == 1 and m["reconnects"] == 0
    assert [r["minute"] for r in minutes] == [1, 2] and len(rows) == 2
    # 4 planned; the first is lost only if the page took over 15 s to show video.
    assert m["turns"] >= 3 and m["turns_answered"] == m["turns"]
    assert m["fps_min"] >= FPS_FLOOR
    assert m["page_errors"] == 0, result["runs"]["page_errors"]
