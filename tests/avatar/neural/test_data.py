"""Training data: synthetic corpus → preprocess → shards → ShardDataset, resume, CLI.

Real parts only: eSpeak NG speech, the procedural generator, H.264/AAC mp4s through
PyAV, dlib face tracking, safetensors shards on disk.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor

import av
import numpy as np
import pytest

from avatar.export import probe, write_mp4
from avatar.face.crop import crop_frame, to_crop
from avatar.neural_audio import SAMPLE_RATE, frame_rows, mel_for_frames
from avatar.synthetic import make_demo_avatar
from avatar.train import (
    InjectedFault,
    PreprocessError,
    PreprocessOptions,
    ShardDataset,
    find_videos,
    load_entries,
    preprocess,
)
from avatar.train.crops import jitter_px
from avatar.train.shards import read_metadata, read_shard
from avatar.train.synthetic import make_synthetic_corpus
from avatar.train.video import iter_frames, read_audio
from avatar.types import VideoFrame
from runtime.cli_train import espeak_speaker
from tests.runtime.test_cli import run

CLIPS, SECONDS, HEIGHT = 3, 4.0, 128
OPTIONS = PreprocessOptions.preset("tiny", shard_frames=40)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    clips = make_synthetic_corpus(folder, CLIPS, SECONDS, HEIGHT, seed=0, speak=espeak_speaker())
    return folder, clips


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    """The corpus preprocessed in one uninterrupted run."""
    out = tmp_path_factory.mktemp("shards")
    report = preprocess(corpus[0], out, OPTIONS)
    return out, report


def _shards_of(out, entry):
    return [read_shard(out / "videos" / entry["key"] / s["file"]) for s in entry["shards"]]


def _tree_digest(out):
    """Every shard's name, metadata and tensors (the file bytes are not stable: safetensors
    writes the metadata keys in no fixed order)."""
    digest = hashlib.sha256()
    for path in sorted((out / "videos").rglob("*.safetensors")):
        digest.update(path.relative_to(out).as_posix().encode())
        digest.update(json.dumps(read_metadata(path), sort_keys=True).encode())
        for name, tensor in sorted(read_shard(path).items()):
            digest.update(name.encode() + tensor.tobytes())
    return digest.hexdigest()


def _one_clip_frames(folder: str) -> list[np.ndarray]:
    """A one-clip corpus made in this (fresh) interpreter, decoded."""
    (clip,) = make_synthetic_corpus(folder, 1, 1.0, HEIGHT, seed=3, speak=espeak_speaker())
    return list(iter_frames(clip.video))


def test_synthetic_corpus_is_lossless_and_repeats(tmp_path):
    """The default corpus is lossless H.264 (a lossy encode follows x264's thread count,
    so it could not be the same on every machine): the same seed, made in two fresh
    interpreters (eSpeak NG carries state within one), decodes to the same frames. A
    quality outside 0..51 is refused in plain words."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
        first = fresh.submit(_one_clip_frames, str(tmp_path / "a")).result()
    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
        second = fresh.submit(_one_clip_frames, str(tmp_path / "b")).result()
    assert len(first) == len(second) == 25
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    with av.open(str(tmp_path / "a" / "clip_00000.mp4")) as container:
        assert container.streams.video[0].codec_context.profile == "High 4:4:4 Predictive"
    with pytest.raises(ValueError, match="crf must be in 0..51"):
        make_synthetic_corpus(tmp_path / "c", 1, 1.0, HEIGHT, seed=0, speak=None, crf=60)


def test_synthetic_corpus_is_talking_clips_with_ground_truth(corpus):
    folder, clips = corpus
    assert len(clips) == CLIPS and sorted(find_videos(folder)) == [c.video for c in clips]
    texts = set()
    for clip in clips:
        info = probe(clip.video)
        assert info["video_frames"] == SECONDS * 25 == clip.frames
        assert (info["width"], info["height"]) == (170, HEIGHT)
        assert abs(info["audio_duration"] - SECONDS) < 0.05
        meta = json.loads(clip.info.read_text())
        assert meta["synthetic"] is True and meta["frames"] == clip.frames
        assert any(t["kind"] == "phoneme" for t in meta["timings"])
        assert np.load(clip.landmarks)["landmarks"].shape == (clip.frames, 68, 2)
        pcm = read_audio(clip.video)
        assert np.sqrt(np.mean(pcm**2)) > 0.01, "the clip must carry speech"
        texts.add(meta["text"])
    assert len(texts) == CLIPS, "every clip says something else"


def test_preprocess_writes_aligned_shards(corpus, shards):
    folder, clips = corpus
    out, report = shards
    assert len(report.processed) == CLIPS and not report.resumed and not report.skipped
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"videos": 3, "skipped": 0, "frames": 300, "shards": 9}
    for entry, clip in zip(manifest["videos"], clips, strict=True):
        assert entry["status"] == "done" and entry["source"] == clip.video.name
        parts = _shards_of(out, entry)
        assert [len(p["frames"]) for p in parts] == [40, 40, 20]
        frames = np.concatenate([p["frames"] for p in parts])
        mel = np.concatenate([p["mel"] for p in parts])
        assert frames.shape == (100, 64, 64, 3) and frames.dtype == np.uint8
        assert mel.shape == (400, 80) and mel.dtype == np.float32
        # The shards' rows are the feature contract applied to the clip's own audio track.
        expected = mel_for_frames(read_audio(clip.video), SAMPLE_RATE, 100)
        assert np.array_equal(mel, expected)
        meta = read_metadata(out / "videos" / entry["key"] / entry["shards"][1]["file"])
        assert meta["start"] == "40" and meta["fps"] == "25" and meta["source"] == entry["source"]
        # Tracked landmarks against the generator's exact ones, in crop pixels.
        truth = np.load(clip.landmarks)["landmarks"]
        boxes = np.concatenate([p["boxes"] for p in parts])
        marks = np.concatenate([p["landmarks"] for p in parts])
        truth_in_crop = np.stack([to_crop(truth[i], boxes[i], 64) for i in range(100)])
        error = np.linalg.norm(marks - truth_in_crop, axis=2)
        assert np.isfinite(error).all(axis=1).mean() >= 0.9
        assert np.nanmean(error) < 3.0, f"landmarks off by {np.nanmean(error):.2f} px"


def test_crops_are_stable_and_follow_the_face(corpus, shards):
    """Measured on these clips: jitter 0.03-0.04 px after smoothing, 0.7-1.4 px raw; the
    face centre moves by 0.4-0.6 px (std) in the crop while the camera pans by ~8 px."""
    folder, clips = corpus
    out, _ = shards
    for entry, clip in zip(load_entries(out).values(), clips, strict=True):
        assert entry["jitter_px"] < 0.1, entry
        assert entry["jitter_px"] < entry["raw_jitter_px"] / 5, entry
        truth = np.load(clip.landmarks)["landmarks"]
        boxes = np.concatenate([p["boxes"] for p in _shards_of(out, entry)])
        in_crop = np.stack([to_crop(truth[i], boxes[i], 64) for i in range(100)]).mean(axis=1)
        untracked = truth.mean(axis=1) * 64 / boxes[:, 2:3]
        assert in_crop.std(axis=0).max() < 1.5
        assert untracked[:, 0].std() > 4.0, "the synthetic camera pan must be there"


def test_rerun_skips_finished_videos(corpus, shards):
    out, _ = shards
    before = (out / "manifest.json").read_bytes(), _tree_digest(out)
    report = preprocess(corpus[0], out, OPTIONS)
    assert report.processed == () and len(report.resumed) == CLIPS and report.shards == 0
    assert ((out / "manifest.json").read_bytes(), _tree_digest(out)) == before
    with pytest.raises(PreprocessError, match="other options"):
        preprocess(corpus[0], out, PreprocessOptions.preset("base"))


def test_killed_run_resumes_to_the_same_result(corpus, shards, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InjectedFault):  # three shards of video 1, then one of video 2
        preprocess(corpus[0], out, OPTIONS, fail_after_shards=4)
    done = load_entries(out)
    assert len(done) == 1, "only the finished video is visible"
    assert [p.name for p in (out / "videos").iterdir() if p.name.startswith(".")], "partial"
    assert len(ShardDataset(out, window=8).videos) == 1
    report = preprocess(corpus[0], out, OPTIONS)
    assert report.resumed == tuple(done) and len(report.processed) == CLIPS - 1
    assert not [p for p in (out / "videos").iterdir() if p.name.startswith(".")]
    reference = shards[0]
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert _tree_digest(out) == _tree_digest(reference)


def _frames(image, n):
    return [VideoFrame(image, i / 25, i) for i in range(n)]


def test_bad_videos_are_skipped_with_a_reason(corpus, tmp_path):
    src = tmp_path / "vox"
    nested = src / "id00017" / "abc123"  # VoxCeleb layout
    nested.mkdir(parents=True)
    shutil.copy(corpus[1][0].video, nested / "00001.mp4")
    face = make_demo_avatar(128).image
    write_mp4(src / "silent.mp4", _frames(face, 30), 25)  # no audio stream
    blank = np.full((128, 128, 3), 180, np.uint8)
    write_mp4(src / "noface.mp4", _frames(blank, 30), 25, np.zeros(19200, np.float32), 16000)
    write_mp4(src / "short.mp4", _frames(face, 5), 25, np.zeros(3200, np.float32), 16000)
    (src / "notes.txt").write_text("not a video")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really")
    shutil.copy(corpus[1][0].video, src / ".hidden.mp4")
    found = [p.relative_to(src).as_posix() for p in find_videos(src)]
    assert found == ["broken.mp4", "id00017/abc123/00001.mp4", "noface.mp4", "short.mp4",
                     "silent.mp4"]  # fmt: skip
    report = preprocess(src, tmp_path / "out", OPTIONS)
    entries = {e["source"]: e for e in load_entries(tmp_path / "out").values()}
    assert entries["id00017/abc123/00001.mp4"]["status"] == "done"
    reasons = {k: e["reason"] for k, e in entries.items() if e["status"] == "skipped"}
    assert "no audio" in reasons["silent.mp4"]
    assert "no usable face" in reasons["noface.mp4"]
    assert "too short" in reasons["short.mp4"]
    assert "cannot" in reasons["broken.mp4"]
    assert set(report.skipped.values()) == set(reasons.values())


def test_frames_are_resampled_to_25_fps_by_time(tmp_path):
    # A 30 fps clip whose frame k is painted with grey level 4 k.
    frames = [VideoFrame(np.full((64, 64, 3), 4 * k, np.uint8), k / 30, k) for k in range(60)]
    path = write_mp4(tmp_path / "thirty.mp4", frames, 30, crf=0)
    levels = [int(np.median(f)) for f in iter_frames(path, 25)]
    assert len(levels) == 50  # 2 s at 25 fps
    nearest = [4 * int(np.floor(i * 30 / 25 + 0.5 - 1e-9)) for i in range(50)]
    assert np.abs(np.array(levels) - nearest).max() <= 2


@pytest.mark.parametrize(("side", "size"), [(40.0, 64), (97.3, 64), (301.7, 64)])
def test_crops_are_sub_pixel_and_match_the_landmark_mapping(side, size):
    """A blob at a fractional position lands where ``to_crop`` says, enlarged or shrunk
    (more than 2x takes the area pre-shrink path)."""
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float64)
    for centre in ((301.37, 222.81), (140.5, 260.25)):
        sigma = side / 12
        blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
        image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
        box = np.array([centre[0] + 0.3 * side / 2, centre[1] - 0.2 * side / 2, side])
        crop = crop_frame(image, box, size)[..., 0].astype(np.float64)
        assert crop.shape == (size, size)
        cy, cx = np.mgrid[0:size, 0:size]
        found = np.array([(crop * cx).sum(), (crop * cy).sum()]) / crop.sum()
        assert np.abs(found - to_crop(np.array(centre), box, size)).max() < 0.05


def test_jitter_metric():
    t = np.arange(50, dtype=np.float64)
    pan = np.stack([100 + 2.5 * t, 80 + 0 * t, 100 + 0 * t], axis=1)
    assert jitter_px(pan, 100) < 1e-9  # a steady pan does not shake
    shaky = pan.copy()
    shaky[:, 0] += np.where(t % 2 == 0, 0.5, -0.5)  # ±0.5 px from frame to frame
    assert abs(jitter_px(shaky, 100) - 2.0) < 1e-9
    assert abs(jitter_px(shaky, 200) - 4.0) < 1e-9  # in output pixels


def test_no_videos_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="no videos found under .*HDTF.*VoxCeleb"):
        preprocess(tmp_path / "empty", tmp_path / "out", OPTIONS)
    with pytest.raises(PreprocessError, match="no such folder"):
        preprocess(tmp_path / "missing", tmp_path / "out", OPTIONS)
    with pytest.raises(PreprocessError, match="unknown size 'huge'"):
        PreprocessOptions.preset("huge")
    with pytest.raises(PreprocessError, match="no preprocessed video"):
        ShardDataset(tmp_path / "empty")


def test_dataset_windows_are_aligned(shards):
    out, _ = shards
    data = ShardDataset(out, window=8, seed=1)
    assert len(data) == 300 // 8
    whole = {v.key: [read_shard(p) for p in v.paths] for v in data.videos}
    for index in range(12):
        item = data[index]
        parts = whole[item["video"]]
        frames = np.concatenate([p["frames"] for p in parts])
        mel = np.concatenate([p["mel"] for p in parts])
        s = item["start"]
        assert item["frames"].shape == (8, 3, 64, 64) and item["mel"].shape == (32, 80)
        raw = ((item["frames"].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
        assert np.array_equal(raw.astype(np.uint8), frames[s : s + 8])
        for k in range(8):  # window frame k ↔ mel rows 4k..4k+3 ↔ video frame s + k
            assert np.array_equal(item["mel"][frame_rows(k)].numpy(), mel[frame_rows(s + k)])
        ref = item["reference_index"]
        assert not s <= ref < s + 8, "the reference frame comes from outside the window"
        assert item["reference"].shape == (3, 64, 64)
    again = ShardDataset(out, window=8, seed=1)
    assert again[3]["start"] == data[3]["start"] and again[3]["video"] == data[3]["video"]
    # A window across a shard boundary (shards hold 40 frames) is read from both shards.
    raw = ShardDataset(out, window=8, normalize=False)
    crossing = raw.window_at(0, 36)
    parts = whole[raw.videos[0].key]
    expected = np.concatenate([parts[0]["mel"][144:], parts[1]["mel"][:16]])
    assert np.array_equal(crossing["mel"], expected)
    assert crossing["frames"].shape == (8, 64, 64, 3)


def test_audio_stays_aligned_through_mp4_and_shards(tmp_path):
    """Tone bursts filling frames 10, 23 and 41 of a clip come out in rows 4i..4i+3."""
    n, bursts = 50, (10, 23, 41)
    pcm = np.zeros(n * 640, np.float32)
    t = np.arange(640) / SAMPLE_RATE
    for i in bursts:
        pcm[i * 640 : (i + 1) * 640] = 0.5 * np.sin(2 * np.pi * 700 * t)
    src = tmp_path / "src"
    face = make_demo_avatar(128, seed=2).image
    write_mp4(src / "bursts.mp4", _frames(face, n), 25, pcm, SAMPLE_RATE)
    out = tmp_path / "out"
    preprocess(src, out, OPTIONS)
    data = ShardDataset(out, window=n, normalize=False)
    energy = np.exp(data.window_at(0, 0)["mel"]).sum(axis=1)
    per_frame = energy.reshape(n, 4).mean(axis=1)
    loud = sorted(np.argsort(per_frame)[-3:].tolist())
    assert loud == list(bursts)
    for i in bursts:
        assert energy[frame_rows(i)].min() > 10 * max(energy[4 * i - 3], energy[4 * i + 6])


@pytest.mark.slow
def test_train_commands_run(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    result = run("train", "synth-corpus", str(src), "--clips", "2", "--seconds", "2",
                 "--size", "128")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 2 synthetic clips (100 frames" in result.stderr
    result = run("train", "preprocess", str(src), str(out), "--size", "tiny")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["videos"] == 2 and manifest["options"]["size"] == 64
    again = run("train", "preprocess", str(src), str(out), "--size", "tiny")
    assert again.returncode == 0 and "2 already done" in again.stderr
    bad = run("train", "preprocess", str(src), str(out), "--size", "huge")
    assert bad.returncode == 2 and "unknown size" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    none = run("train", "preprocess", str(tmp_path / "empty"), str(tmp_path / "o"))
    assert none.returncode == 2 and "no videos found" in none.stderr
