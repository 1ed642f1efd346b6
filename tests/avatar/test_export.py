"""mp4 + landmarks export, read back with PyAV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatar.export import probe, write_landmarks, write_mp4
from avatar.types import VideoFrame


def frames(n: int, size: int = 64) -> list[VideoFrame]:
    rng = np.random.default_rng(0)
    return [
        VideoFrame(
            image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            pts=i / 25,
            index=i,
            landmarks=np.full((68, 2), i, np.float32),
            mouth_open=i / n,
            speaking=i % 2 == 0,
        )
        for i in range(n)
    ]


def test_mp4_video_and_audio_last_equally_long(tmp_path):
    clip = frames(37)
    tone = (0.2 * np.sin(np.arange(22_050 * 2) * 2 * np.pi * 200 / 22_050)).astype(np.float32)
    path = write_mp4(tmp_path / "a.mp4", clip, 25, tone, 22_050)  # audio longer: trimmed
    info = probe(path)
    assert info["video_frames"] == 37 and info["width"] == 64
    assert abs(info["video_duration"] - 37 / 25) < 1e-6
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 25
    short = write_mp4(tmp_path / "b.mp4", clip, 25, tone[:1000], 22_050)  # shorter: padded
    info = probe(short)
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 25


def test_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield from frames(3)
        raise RuntimeError("generator died")

    target = tmp_path / "c.mp4"
    with pytest.raises(RuntimeError, match="generator died"):
        write_mp4(target, broken(), 25)
    assert not target.exists() and not list(tmp_path.glob(".c.*"))


def test_landmarks_npz(tmp_path):
    clip = frames(5)
    data = np.load(write_landmarks(tmp_path / "l.npz", clip, 25))
    assert data["landmarks"].shape == (5, 68, 2)
    np.testing.assert_allclose(data["pts"], [0, 0.04, 0.08, 0.12, 0.16])
    assert data["speaking"].tolist() == [True, False, True, False, True]
    assert json.loads(str(data["meta"]))["fps"] == 25
