"""``likeness bench consent --attacks`` as a real process: the short form CI runs."""

from __future__ import annotations

import json

import pytest

from tests.runtime.test_cli import run

pytestmark = pytest.mark.slow


def test_short_attack_bench_writes_apcer_and_bpcer(tmp_path):
    out = tmp_path / "attacks.json"
    result = run(
        "bench", "consent", "--attacks", "--bona-fide", "1", "--per-class", "1",
        "--only", "warp_25d,replay", "--json", str(out),
        env={"LIKENESS_DATA_DIR": str(tmp_path / "data")}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "APCER" in result.stdout and "warp_25d" in result.stdout
    body = json.loads(out.read_text())
    assert body["bench"] == "consent-attacks"
    assert set(body["classes"]) == {"warp_25d", "replay"}
    for kind, found in body["classes"].items():
        assert found["runs"] == 1 and found["apcer"] == 0.0, (kind, found)
        assert found["caught_by"], kind  # some point refused it, by name
    assert body["bona_fide"]["runs"] == 1 and body["bona_fide"]["bpcer"] == 0.0, body["bona_fide"]
    assert body["metrics"]["apcer_max"] == 0.0
    assert 0 < body["metrics"]["cpu_per_ceremony_second"] < 1.0


def test_unknown_attack_class_is_refused_by_name():
    result = run("bench", "consent", "--attacks", "--only", "hologram")
    assert result.returncode == 2
    assert "hologram" in result.stderr and "still_photo" in result.stderr


def test_unknown_face_backend_is_refused_by_name_in_both_modes():
    for mode in ((), ("--attacks",)):
        result = run("bench", "consent", *mode, "--face-backend", "insightface")
        assert result.returncode == 2, result.stderr
        assert "insightface" in result.stderr and "mediapipe" in result.stderr
