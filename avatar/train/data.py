"""Preprocessing a folder of talking-head videos into training shards.

Sources (:func:`find_videos`): every video file under ``src_dir``, found by a recursive
glob, so both common layouts work: HDTF's flat folder (``SRC/*.mp4``) and VoxCeleb's
``SRC/id*/VIDEO_ID/*.mp4``. Extensions: .mp4, .mov, .mkv, .webm, .avi; hidden files
(names starting with ".") and anything under ``out_dir`` are ignored.

For each video (:func:`preprocess`): decode at 25 fps and 16 kHz mono
(:mod:`avatar.train.video`), track the face and smooth the crop box
(:mod:`avatar.train.crops`), cut and resize the crops (64 tiny / 256 base / 512 large),
compute the log-mel rows (:mod:`avatar.neural_audio`, 4 per frame) and write shards of
``shard_frames`` frames (:mod:`avatar.train.shards`). The output folder::

    OUT/options.json                  the options the folder was made with
    OUT/manifest.json                 every video's entry, sorted by key, and totals
    OUT/videos/<key>/entry.json       one video's entry (status "done" or "skipped")
    OUT/videos/<key>/shard_00000.safetensors ...

Resumable: a video is written into ``OUT/videos/.<key>.partial/`` and that folder is
renamed to ``<key>`` only when complete, so a crash leaves no half video visible; the
next run removes stale ``.partial`` folders and skips every video whose entry exists
and whose source has not changed (same SHA-256). ``entry.json`` files are the truth;
``manifest.json`` is rebuilt from them (at least every 10 s and at the end) and holds
no wall-clock data, so a resumed run ends with the same manifest as an uninterrupted
one. A video without audio, without a face, too short or unreadable is not an error:
its entry says ``"status": "skipped"`` with the reason. Entries of videos since removed
from the source folder stay until their ``videos/<key>`` folder is deleted.

Everything here is blocking CPU work: run it in a worker thread from async code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar.errors import AvatarError
from avatar.face.analyzer import FaceAnalyzer
from avatar.face.options import FaceOptions
from avatar.face.registry import load_backend
from avatar.neural_audio import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, mel_for_frames
from avatar.train import crops
from avatar.train.shards import shard_name, write_shard
from avatar.train.video import VideoReadError, iter_frames, probe_video, read_audio

_LOGGER = logging.getLogger(__name__)

MANIFEST_FORMAT = "likeness-shards-v1"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
SIZES = {"tiny": 64, "base": 256, "large": 512}
_MANIFEST_EVERY_S = 10.0


class PreprocessError(AvatarError, ValueError):
    """The preprocessing run cannot start or continue (no videos, wrong output folder)."""


class InjectedFault(RuntimeError):
    """Raised by the ``fail_after_shards`` fault knob of :func:`preprocess` (tests only)."""


@dataclass(frozen=True, slots=True)
class PreprocessOptions:
    """How videos become shards. Build presets with :meth:`preset`.

    Attributes:
        size: side of the square face crops in pixels (tiny 64, base 256, large 512).
        shard_frames: frames per shard (the last shard of a video may be shorter).
        detect_stride: run the face detector every this many frames; landmarks run on
            every frame.
        crop_scale: crop side as a multiple of the landmarks' longer extent.
        crop_shift: vertical move of the crop centre, as a fraction of the side
            (negative moves it up, towards the hair).
        smooth_s: Gaussian sigma of the crop centre's smoothing, seconds.
        size_smooth_s: Gaussian sigma of the crop side's smoothing, seconds.
        min_face_fraction: skip a video whose detections find a face less often.
        min_seconds: skip videos shorter than this.
        face: face detection options; the default detects on frames shrunk to 400 px
            (landmarks still use full resolution) and accepts faces from 32 px wide.
    """

    size: int = 256
    shard_frames: int = 250
    detect_stride: int = 5
    crop_scale: float = 1.8
    crop_shift: float = -0.08
    smooth_s: float = 0.2
    size_smooth_s: float = 0.6
    min_face_fraction: float = 0.5
    min_seconds: float = 0.5
    face: FaceOptions = field(default_factory=lambda: FaceOptions(max_side=400, min_face_px=32))

    def __post_init__(self) -> None:
        checks = (
            ("size", 16 <= self.size <= 2048, "16..2048"),
            ("shard_frames", 1 <= self.shard_frames <= 100_000, "1..100000"),
            ("detect_stride", 1 <= self.detect_stride <= 250, "1..250"),
            ("crop_scale", 1.0 <= self.crop_scale <= 4.0, "1..4"),
            ("crop_shift", -0.5 <= self.crop_shift <= 0.5, "-0.5..0.5"),
            ("smooth_s", 0.0 <= self.smooth_s <= 10.0, "0..10 s"),
            ("size_smooth_s", 0.0 <= self.size_smooth_s <= 10.0, "0..10 s"),
            ("min_face_fraction", 0.0 <= self.min_face_fraction <= 1.0, "0..1"),
            ("min_seconds", 0.0 <= self.min_seconds <= 3600.0, "0..3600 s"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(
                    f"PreprocessOptions.{name}={getattr(self, name)!r} is outside {allowed}"
                )

    @classmethod
    def preset(cls, name: str, **changes: Any) -> PreprocessOptions:
        """Options for ``tiny`` (64 px), ``base`` (256 px) or ``large`` (512 px) crops.

        Raises:
            PreprocessError: an unknown preset name (the message lists the known ones).
        """
        if name not in SIZES:
            raise PreprocessError(f"unknown size {name!r}: use one of {', '.join(SIZES)} ({SIZES})")
        return cls(size=SIZES[name], **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class PreprocessEvent:
    """Progress of a run, for progress bars.

    Attributes:
        index: number of the video (0-based) among ``videos``.
        videos: how many videos the run covers.
        key: the video's key.
        stage: "track" (first pass: faces), "crop" (second pass: shards), "done",
            "skipped" (with a reason in its entry) or "resumed" (done by an earlier run).
        frames: frames handled in this stage so far.
        total: frames expected in this stage (an estimate during "track").
    """

    index: int
    videos: int
    key: str
    stage: Literal["track", "crop", "done", "skipped", "resumed"]
    frames: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class PreprocessReport:
    """What one :func:`preprocess` call did.

    Attributes:
        out_dir: the output folder.
        processed: keys of the videos this run finished (done or skipped).
        resumed: keys already finished by an earlier run (not redone).
        skipped: key → reason, for the videos skipped in this run.
        frames: frames written in this run.
        shards: shards written in this run.
        seconds: wall-clock time of the run.
    """

    out_dir: Path
    processed: tuple[str, ...]
    resumed: tuple[str, ...]
    skipped: dict[str, str]
    frames: int
    shards: int
    seconds: float


# ---------------------------------------------------------------- sources and keys


def find_videos(src_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every video file under ``src_dir``, sorted (see the module doc for the layouts).

    Raises:
        PreprocessError: ``src_dir`` is not a folder, or has no video in it.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise PreprocessError(f"{src}: no such folder of videos")
    skip = Path(out_dir).resolve() if out_dir is not None else None
    found = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path)
    if not found:
        raise PreprocessError(
            f"no videos found under {src}: expected {'/'.join(VIDEO_EXTENSIONS)} files, "
            "flat (HDTF: SRC/*.mp4) or nested (VoxCeleb: SRC/id*/VIDEO_ID/*.mp4)"
        )
    return found


def video_key(relative: str) -> str:
    """A folder-safe, unique key for a source path relative to the source folder."""
    stem = relative.rsplit(".", 1)[0]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[-80:] or "video"
    return f"{safe}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- output folder


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def load_entries(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every finished video's entry (``videos/<key>/entry.json``), by key."""
    videos = Path(out_dir) / "videos"
    entries: dict[str, dict[str, Any]] = {}
    if not videos.is_dir():
        return entries
    for marker in sorted(videos.glob("*/entry.json")):
        if marker.parent.name.startswith("."):
            continue
        entry = json.loads(marker.read_text())
        entries[entry["key"]] = entry
    return entries


def write_manifest(out_dir: str | Path, options: PreprocessOptions) -> Path:
    """Rebuild ``manifest.json`` from the entries on disk; returns its path."""
    out = Path(out_dir)
    entries = load_entries(out)
    done = [e for e in entries.values() if e["status"] == "done"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "fps": VIDEO_FPS,
        "sample_rate": SAMPLE_RATE,
        "options": options.as_dict(),
        "videos": [entries[k] for k in sorted(entries)],
        "totals": {
            "videos": len(done),
            "skipped": len(entries) - len(done),
            "frames": sum(e["frames"] for e in done),
            "shards": sum(len(e["shards"]) for e in done),
        },
    }
    path = out / "manifest.json"
    _write_json(path, manifest)
    return path


def _check_options(out: Path, options: PreprocessOptions) -> None:
    saved = out / "options.json"
    wanted = json.loads(json.dumps(options.as_dict()))
    if saved.is_file():
        existing = json.loads(saved.read_text())
        if existing != wanted:
            changed = sorted(k for k in wanted if existing.get(k) != wanted[k])
            raise PreprocessError(
                f"{out} was made with other options ({', '.join(changed)} differ): "
                "use a new output folder, or the same options to resume"
            )
        return
    _write_json(saved, wanted)


# ---------------------------------------------------------------- one video


@dataclass(slots=True)
class _Run:
    out: Path
    options: PreprocessOptions
    loaded: FaceAnalyzer | None
    on_progress: Callable[[PreprocessEvent], None] | None
    fail_after_shards: int | None
    shards: int = 0
    frames: int = 0

    @property
    def analyzer(self) -> FaceAnalyzer:
        """The face analyzer, loaded on first use (a run that only resumes never loads it)."""
        if self.loaded is None:
            face = self.options.face
            self.loaded = FaceAnalyzer(load_backend(face.backend), None, face)
        return self.loaded

    def emit(self, *args: Any) -> None:
        if self.on_progress is not None:
            self.on_progress(PreprocessEvent(*args))


def _skip(base: dict[str, Any], reason: str) -> dict[str, Any]:
    return {**base, "status": "skipped", "reason": reason, "frames": 0, "shards": []}


def _process(run: _Run, path: Path, base: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """Finish one video into ``partial``; returns its entry (done or skipped).

    Raises:
        VideoReadError: the file cannot be decoded (the caller skips it).
    """
    key, opts = base["key"], run.options
    partial = run.out / "videos" / f".{key}.partial"
    info = probe_video(path)
    if not info.has_audio:
        return _skip(base, "no audio stream (a talking-head clip needs speech)")
    audio = read_audio(path, info.start)
    estimate = max(int(info.duration * VIDEO_FPS), 1)
    track = crops.track_faces(
        iter_frames(path, VIDEO_FPS),
        run.analyzer,
        opts.detect_stride,
        on_frame=lambda n: run.emit(index, count, key, "track", n, estimate),
    )
    base = {**base, "source_fps": round(info.fps, 3), "source_size": [info.width, info.height]}
    n = min(len(track.landmarks), (len(audio) + SAMPLES_PER_FRAME // 2) // SAMPLES_PER_FRAME)
    if n < max(opts.min_seconds * VIDEO_FPS, 3):
        return _skip(base, f"too short: {n / VIDEO_FPS:.2f} s, at least {opts.min_seconds} s")
    fraction = track.face_fraction
    if fraction < opts.min_face_fraction or not np.isfinite(track.landmarks[:n]).any():
        return _skip(
            base,
            f"no usable face: found in {fraction:.0%} of the detections, "
            f"at least {opts.min_face_fraction:.0%} needed",
        )
    raw = crops.raw_boxes(track.landmarks[:n], opts.crop_scale, opts.crop_shift)
    smooth = crops.smooth_boxes(raw, opts.smooth_s * VIDEO_FPS, opts.size_smooth_s * VIDEO_FPS)
    boxes = smooth.astype(np.float32)
    mel = mel_for_frames(audio, SAMPLE_RATE, n)
    shards: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []
    start = 0
    for i, image in enumerate(iter_frames(path, VIDEO_FPS)):
        if i >= n:
            break
        buffer.append(crops.crop_frame(image, boxes[i], opts.size))
        if len(buffer) == opts.shard_frames or i == n - 1:
            stop = start + len(buffer)
            lm = np.stack(
                [crops.to_crop(track.landmarks[j], boxes[j], opts.size) for j in range(start, stop)]
            )
            name = shard_name(len(shards))
            write_shard(
                partial / name,
                np.stack(buffer),
                mel[4 * start : 4 * stop],
                lm,
                boxes[start:stop],
                {
                    "video": key,
                    "source": base["source"],
                    "fps": str(VIDEO_FPS),
                    "size": str(opts.size),
                    "start": str(start),
                    "frames": str(stop - start),
                },
            )
            shards.append({"file": name, "start": start, "frames": stop - start})
            run.shards += 1
            run.emit(index, count, key, "crop", stop, n)
            if run.fail_after_shards is not None and run.shards >= run.fail_after_shards:
                raise InjectedFault(f"fault knob: stopped after {run.shards} shard(s)")
            buffer, start = [], stop
    if start < n:
        raise VideoReadError(f"{path}: the second decoding pass gave {start} of {n} frames")
    run.frames += n
    return {
        **base,
        "status": "done",
        "reason": None,
        "frames": n,
        "seconds": round(n / VIDEO_FPS, 3),
        "shards": shards,
        "face_fraction": round(fraction, 4),
        "raw_jitter_px": round(crops.jitter_px(crops.smooth_boxes(raw, 0, 0), opts.size), 4),
        "jitter_px": round(crops.jitter_px(smooth, opts.size), 4),
    }


# ---------------------------------------------------------------- the run


def preprocess(
    src_dir: str | Path,
    out_dir: str | Path,
    options: PreprocessOptions | None = None,
    *,
    on_progress: Callable[[PreprocessEvent], None] | None = None,
    analyzer: FaceAnalyzer | None = None,
    fail_after_shards: int | None = None,
) -> PreprocessReport:
    """Turn every video under ``src_dir`` into shards under ``out_dir`` (resumable).

    Args:
        src_dir: the videos (HDTF or VoxCeleb layout; see the module doc).
        out_dir: the output folder; rerun with the same one to resume.
        options: crop size, shard length, tracking and smoothing; None is ``base``.
        on_progress: called with a :class:`PreprocessEvent` as work advances.
        analyzer: a loaded face analyzer to reuse; None loads one from ``options.face``.
        fail_after_shards: fault knob for tests: raise :class:`InjectedFault` right
            after this many shards were written in this run (simulates a crash).

    Returns:
        What the run did. Open the result with :class:`avatar.train.dataset.ShardDataset`.

    Raises:
        PreprocessError: no videos found, or ``out_dir`` made with other options.
        ModelNotFoundError: the face models are missing (the message says how to install).
    """
    options = options or PreprocessOptions()
    started = time.perf_counter()
    src, out = Path(src_dir), Path(out_dir)
    videos = find_videos(src, out)
    out.mkdir(parents=True, exist_ok=True)
    _check_options(out, options)
    run = _Run(out, options, analyzer, on_progress, fail_after_shards)
    folder = out / "videos"
    folder.mkdir(exist_ok=True)
    for stale in folder.glob(".*.partial"):
        shutil.rmtree(stale)
    entries = load_entries(out)
    processed: list[str] = []
    resumed: list[str] = []
    skipped: dict[str, str] = {}
    last_manifest = time.monotonic()
    try:
        for index, path in enumerate(videos):
            relative = path.relative_to(src).as_posix()
            key = video_key(relative)
            digest = file_sha256(path)
            old = entries.get(key)
            if old is not None and old.get("sha256") == digest:
                resumed.append(key)
                run.emit(index, len(videos), key, "resumed", old["frames"], old["frames"])
                continue
            base = {"key": key, "source": relative, "sha256": digest}
            partial = folder / f".{key}.partial"
            try:
                entry = _process(run, path, base, index, len(videos))
            except VideoReadError as err:  # a broken file is skipped, not fatal
                shutil.rmtree(partial, ignore_errors=True)
                entry = _skip(base, str(err).removeprefix(f"{path}: "))
            _write_json(partial / "entry.json", entry)
            final = folder / key
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            processed.append(key)
            if entry["status"] == "skipped":
                skipped[key] = entry["reason"]
                _LOGGER.info("skipped %s: %s", relative, entry["reason"])
            run.emit(index, len(videos), key, entry["status"], entry["frames"], entry["frames"])
            if time.monotonic() - last_manifest > _MANIFEST_EVERY_S:
                write_manifest(out, options)
                last_manifest = time.monotonic()
    finally:
        write_manifest(out, options)
    return PreprocessReport(
        out_dir=out,
        processed=tuple(processed),
        resumed=tuple(resumed),
        skipped=skipped,
        frames=run.frames,
        shards=run.shards,
        seconds=time.perf_counter() - started,
    )
