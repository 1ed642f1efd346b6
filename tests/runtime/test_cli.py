"""The likeness command line, run as a real process (exit codes, stderr, files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import espeak_wav

LIKENESS = [sys.executable, "-m", "runtime"]


def run(*args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [*LIKENESS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_config_show_masks_secrets():
    result = run("config", "show", env={"LIKENESS_DIALOGUE__API_KEY": "sk-abc-123"})
    assert result.returncode == 0, result.stderr
    assert 'api_key = "***"' in result.stdout
    assert "sk-abc-123" not in result.stdout + result.stderr


def test_config_show_json_is_the_effective_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[persona]\nname = "Ada"\neldercare = true\n')
    result = run("--config", str(cfg), "config", "show", "--json")
    data = json.loads(result.stdout)
    assert data["persona"]["name"] == "Ada" and data["persona"]["eldercare"] is True


def test_bad_config_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tts]\nbackend = "festival"\n')
    result = run("--config", str(cfg), "config", "show")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("likeness: error: tts.backend")


def test_unknown_env_exits_2():
    result = run("config", "show", env={"LIKENESS_TTS__VOICE": "x"})
    assert result.returncode == 2 and "LIKENESS_TTS__VOICE" in result.stderr


def test_missing_and_corrupt_audio_exit_2(tmp_path):
    result = run("transcribe", str(tmp_path / "nope.wav"))
    assert result.returncode == 2 and "no such" in result.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    result = run("transcribe", str(bad))
    assert result.returncode == 2 and "corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_transcribe_resamples_other_rates_and_stereo(tmp_path):
    source = espeak_wav("Please open the window and let the fresh air in.", tmp_path / "s.wav", 140)
    pcm, rate = sf.read(source, dtype="float32")
    stereo = tmp_path / "stereo44k.wav"
    from voice.audio import resample

    up = resample(pcm, rate, 44_100)
    sf.write(stereo, np.stack([up, up], axis=1), 44_100)
    result = run("transcribe", str(stereo), "--json")
    assert result.returncode == 0, result.stderr
    turns = json.loads(result.stdout)
    assert len(turns) == 1 and "window" in turns[0]["text"].lower()


def test_say_writes_speech_and_rejects_empty(tmp_path):
    out = tmp_path / "hello.wav"
    result = run("say", "Good morning. How did you sleep?", "-o", str(out))
    assert result.returncode == 0, result.stderr
    info = sf.info(out)
    assert info.samplerate == 22_050 and info.duration > 1.0
    assert run("say", "  ", "-o", str(out)).returncode == 2
    assert run("say", "hi", "-o", str(tmp_path / "no" / "dir" / "x.wav")).returncode == 2


def test_say_with_espeak_backend(tmp_path):
    out = tmp_path / "e.wav"
    result = run("say", "Hello there.", "-o", str(out), "--backend", "espeak")
    assert result.returncode == 0, result.stderr
    assert sf.info(out).duration > 0.3


def test_doctor_reports_a_ready_cpu_machine():
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    for name in (
        "python",
        "model: whisper tiny.en",
        "model: piper en_US-joe-medium",
        "model: SmolLM2-135M GGUF",
        "model: silero VAD",
        "data dir",
    ):
        assert checks[name]["status"] == "ok", checks[name]
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok")
    # The default face stack may ship commercially, and doctor says so and which is on.
    active = checks["face: mediapipe landmarks (active)"]
    assert active["status"] == "ok" and "Apache-2.0" in active["detail"], active
    assert "not for commercial use" in checks["face: dlib landmarks"]["detail"]
    dlib = run("doctor", "--json", env={"LIKENESS_AVATAR__LANDMARKS": "dlib"})
    names = {c["name"] for c in json.loads(dlib.stdout)}
    assert {"face: dlib landmarks (active)", "face: mediapipe landmarks"} <= names
    table = run("doctor")
    assert "likeness doctor" in table.stdout and "model: whisper tiny.en" in table.stdout


@pytest.mark.slow
def test_listen_runs_the_whole_voice_loop(tmp_path, _isolated_data_dir):
    folder = tmp_path
    first = espeak_wav("Hello, what is your name?", folder / "a.wav", 140)
    second = espeak_wav("I fell down and I can't get up.", folder / "b.wav", 140)
    a, rate = sf.read(first, dtype="float32")
    b, _ = sf.read(second, dtype="float32")
    gap = np.zeros(int(1.5 * rate), np.float32)
    both = folder / "two.wav"
    sf.write(both, np.concatenate([gap, a, gap, b, gap]), rate)
    out = folder / "reply.wav"
    result = run("listen", str(both), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    turns = report["turns"]
    assert len(turns) == 2
    assert "name" in turns[0]["transcript"].lower()
    assert all(t["reply"].strip() for t in turns)
    assert turns[0]["alert"] is None and turns[1]["alert"] == "fall"
    assert all(t["first_audio_s"] is not None for t in turns)
    assert sf.info(out).duration > 1.0
    alerts = (_isolated_data_dir / "alerts.jsonl").read_text().splitlines()
    assert json.loads(alerts[0])["category"] == "fall"


@pytest.mark.slow
def test_chat_streams_text_and_speaks(tmp_path, _isolated_data_dir):
    result = run(
        "chat",
        "--person",
        "ann",
        "--audio-dir",
        str(tmp_path),
        stdin="Hello! Who are you?\nThank you.\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Robin> ") == 2
    wavs = sorted(tmp_path.glob("reply-*.wav"))
    assert len(wavs) == 2 and all(sf.info(w).duration > 0.3 for w in wavs)
    memory = list((_isolated_data_dir / "memory").glob("*"))
    assert memory, "conversation memory was not persisted"


@pytest.mark.slow
def test_bench_voice_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "voice", "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    metrics = data["metrics"]
    for key in (
        "asr_rtf",
        "tts_piper_first_audio_ms",
        "tts_piper_rtf",
        "llm_first_token_ms",
        "turn_first_audio_ms",
    ):
        assert key in metrics and metrics[key] > 0
    assert metrics["asr_rtf"] < 1.0, "tiny.en should run faster than real time"
    # The stages of a turn happen in order.
    assert metrics["turn_transcript_ms"] <= metrics["turn_first_sentence_ms"]
    assert metrics["turn_first_sentence_ms"] <= metrics["turn_first_audio_ms"]
    assert "asr_rtf" in result.stdout


def test_disk_full_is_one_line_exit_1(capsys):
    import errno

    import typer

    from runtime.cli import handle_errors

    @handle_errors
    def write() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/reply.wav")

    with pytest.raises(typer.Exit) as info:
        write()
    assert info.value.exit_code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["likeness: error: /data/reply.wav: No space left on device"]
