"""Synthetic training clips: the procedural generator speaking varied sentences.

For tests and demos of the training pipeline, without any real person's video. Each
clip is a face drawn by code (:func:`avatar.synthetic.make_demo_avatar`, a different
variant per clip) or a given prepared avatar, animated by the procedural generator
from speech, placed on a wider (4:3) canvas that drifts slowly sideways (a camera
pan, so the crop tracker has work to do), and written as an mp4 with its audio::

    OUT/clip_00000.mp4             H.264 (lossless by default) + AAC, 25 fps, SIZE pixels high
    OUT/clip_00000.landmarks.npz   the generator's own 68 landmarks per frame, in the
                                   mp4's pixels (ground truth for tests)
    OUT/clip_00000.json            text, voice variant, face, phoneme/word timings

This package does not import ``voice``: the caller passes a ``speak`` function (the
command line builds one from eSpeak NG, see ``runtime.cli_train.espeak_speaker``).
Every clip is labelled synthetic in its JSON. Clips that already exist are kept, so
an interrupted run can be repeated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.export import write_landmarks, write_mp4
from avatar.procedural.generator import ProceduralOptions, render_clip
from avatar.synthetic import make_demo_avatar
from avatar.types import PreparedAvatar, TimingLike, VideoFrame

FPS = 25.0

SENTENCES: tuple[str, ...] = (
    "Good morning, did you sleep well last night?",
    "The weather is lovely today, shall we open the window?",
    "I found a recipe for apple pie that you might enjoy.",
    "Please remember to drink a glass of water after lunch.",
    "My favourite colour has always been a deep ocean blue.",
    "Would you like me to read the news or a short story?",
    "The garden is full of roses and the bees are busy.",
    "Your daughter called and said she will visit on Sunday.",
    "Let us try a puzzle: what has keys but cannot open locks?",
    "Five, four, three, two, one, and we are ready to begin.",
    "Music from the fifties always puts me in a cheerful mood.",
    "Thank you for telling me, that sounds like a wonderful memory.",
    "We could take a slow walk around the park this afternoon.",
    "Voices, faces and photographs help us remember the people we love.",
    "The train leaves at half past nine from platform seven.",
    "Peter picked a peck of pickled peppers, or so they say.",
    "She sells sea shells by the sea shore every summer.",
    "How are you feeling today, is anything bothering you?",
    "A cup of tea and a biscuit would be perfect right now.",
    "Which would you prefer, chess, cards or a crossword?",
)


@dataclass(frozen=True, slots=True, eq=False)
class SpokenText:
    """What a ``speak`` function returns.

    Attributes:
        pcm: mono float32 speech in [-1, 1].
        sample_rate: its rate.
        timings: phoneme and/or word timings from the start of ``pcm``.
    """

    pcm: np.ndarray
    sample_rate: int
    timings: tuple[TimingLike, ...] = ()


Speaker = Callable[[str, int], SpokenText]
"""``speak(text, variant) -> SpokenText``; ``variant`` picks a voice (any int)."""


@dataclass(frozen=True, slots=True)
class CorpusClip:
    """One written clip: its files, length and what it says."""

    video: Path
    landmarks: Path
    info: Path
    frames: int
    text: str


def _timing_dict(t: TimingLike, offset: float) -> dict:
    return {
        "symbol": t.symbol,
        "kind": t.kind,
        "start": round(t.start + offset, 4),
        "end": round(t.end + offset, 4),
    }


def _speech_for(
    speak: Speaker, rng: np.random.Generator, seconds: float, variant: int
) -> tuple[np.ndarray, int, list[dict], str]:
    """Sentences until ``seconds`` are filled, cut to exactly ``seconds``."""
    pieces: list[np.ndarray] = []
    timings: list[dict] = []
    texts: list[str] = []
    rate = 0
    total = 0.0
    order = rng.permutation(len(SENTENCES))
    k = 0
    while total < seconds:
        text = SENTENCES[int(order[k % len(order)])]
        k += 1
        spoken = speak(text, variant)
        if rate and spoken.sample_rate != rate:
            raise ValueError("speak() changed its sample rate between sentences")
        rate = spoken.sample_rate
        pause = np.zeros(int(rate * float(rng.uniform(0.1, 0.4))), np.float32)
        timings += [_timing_dict(t, total) for t in spoken.timings if t.start < seconds - total]
        pieces += [np.asarray(spoken.pcm, np.float32).reshape(-1), pause]
        texts.append(text)
        total += (len(spoken.pcm) + len(pause)) / rate
        if len(spoken.pcm) == 0:
            raise ValueError(f"speak() returned no audio for {text!r}")
    pcm = np.concatenate(pieces)[: int(round(seconds * rate))]
    for t in timings:
        t["end"] = min(t["end"], seconds)
    return pcm, rate, timings, " ".join(texts)


def _on_canvas(frames: list[VideoFrame], width: int, rng: np.random.Generator) -> list:
    """Place square frames on a wider canvas whose offset drifts (a slow pan)."""
    size = frames[0].image.shape[0]
    room = width - size
    phase = float(rng.uniform(0, 2 * np.pi))
    period = float(rng.uniform(3.0, 6.0))
    out = []
    for frame in frames:
        shift = int(round(room / 2 + 0.4 * room * np.sin(2 * np.pi * frame.pts / period + phase)))
        image = frame.image
        fill = image[: max(size // 16, 1), : max(size // 16, 1)].reshape(-1, 3).mean(axis=0)
        canvas = np.empty((size, width, 3), np.uint8)
        canvas[:] = np.round(fill).astype(np.uint8)
        canvas[:, shift : shift + size] = image
        landmarks = None
        if frame.landmarks is not None:
            landmarks = (frame.landmarks + np.array([shift, 0], np.float32)).astype(np.float32)
        out.append(dataclasses.replace(frame, image=canvas, landmarks=landmarks))
    return out


def make_synthetic_corpus(
    out_dir: str | Path,
    n: int,
    seconds: float,
    size: int,
    seed: int,
    speak: Speaker,
    *,
    avatars: Sequence[PreparedAvatar] = (),
    on_clip: Callable[[int, int], None] | None = None,
    crf: int = 0,
) -> list[CorpusClip]:
    """Write ``n`` synthetic talking clips of ``seconds`` each into ``out_dir``.

    Args:
        out_dir: the folder (created); a flat folder of mp4s, as ``preprocess`` reads.
        n: how many clips.
        seconds: length of each clip (speech is cut to it).
        size: frame height in pixels (even, at least 64); the width is 4/3 of it.
        seed: makes faces, sentences, voices and drift reproducible.
        speak: ``speak(text, variant) -> SpokenText`` (see :data:`Speaker`).
        avatars: prepared avatars to use in turn instead of drawn faces (e.g. a
            consented photo); empty uses a drawn face variant per clip.
        on_clip: called with (clips done, n) for progress bars.
        crf: H.264 quality. 0, the default, is lossless: the clips decode to exactly the
            frames drawn on every machine, so a seed makes the same corpus everywhere
            (a lossy encode follows x264's thread count, set from the CPU count, and
            now and then differs from run to run). Lossless clips are about 4-5× larger
            (128 px: ~70 KB/s); 18-23 makes small lossy clips.

    Returns:
        The clips, in order. Open the folder with :func:`avatar.train.data.preprocess`.

    Raises:
        ValueError: ``n``, ``seconds`` or ``size`` out of range.
    """
    if n < 1 or not 0.5 <= seconds <= 600 or not 64 <= size <= 2048 or size % 2:
        raise ValueError(
            f"make_synthetic_corpus: need n >= 1, 0.5 <= seconds <= 600 and an even size "
            f"in 64..2048; got n={n}, seconds={seconds}, size={size}"
        )
    if not 0 <= crf <= 51:
        raise ValueError(f"make_synthetic_corpus: crf must be in 0..51 (0 = lossless); got {crf}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = int(round(size * 4 / 3 / 2)) * 2
    clips = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        name = f"clip_{k:05d}"
        video, marks, info = (out / f"{name}{s}" for s in (".mp4", ".landmarks.npz", ".json"))
        if video.is_file() and marks.is_file() and info.is_file():
            meta = json.loads(info.read_text())
            clips.append(CorpusClip(video, marks, info, meta["frames"], meta["text"]))
            if on_clip is not None:
                on_clip(k + 1, n)
            continue
        variant = int(rng.integers(0, 1 << 16))
        if avatars:
            avatar = avatars[k % len(avatars)]
            face = avatar.id
        else:
            face_seed = int(seed * 1000 + k)
            avatar = make_demo_avatar(size=size, seed=face_seed)
            face = f"synthetic seed {face_seed}"
        pcm, rate, timings, text = _speech_for(speak, rng, seconds, variant)
        options = ProceduralOptions(size=size, fps=FPS, seed=int(rng.integers(1 << 16)))
        frames = render_clip(avatar, pcm, rate, _Timings.from_dicts(timings), options)
        frames = _on_canvas(frames, width, rng)
        write_mp4(video, frames, FPS, pcm, rate, crf=crf)
        write_landmarks(marks, frames, FPS)
        meta = {
            "synthetic": True,
            "generator": "procedural",
            "face": face,
            "voice_variant": variant,
            "text": text,
            "seconds": seconds,
            "frames": len(frames),
            "fps": FPS,
            "size": [width, size],
            "timings": timings,
        }
        _write_text(info, json.dumps(meta, indent=1) + "\n")
        clips.append(CorpusClip(video, marks, info, len(frames), text))
        if on_clip is not None:
            on_clip(k + 1, n)
    return clips


@dataclass(frozen=True, slots=True)
class _Timings:
    symbol: str
    kind: str
    start: float
    end: float

    @classmethod
    def from_dicts(cls, items: list[dict]) -> list[_Timings] | None:
        return [cls(**t) for t in items] or None


def _write_text(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(name, path)
