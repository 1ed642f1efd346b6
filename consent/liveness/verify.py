"""Decide whether an uploaded clip proves a live person who matches the photo.

Five points are checked, each answered in plain words (:class:`Point`):

1. ``digits`` - Whisper (biased to digits by :data:`DIGITS_PROMPT`) heard exactly the
   challenge's code, and the speech lies inside the challenge window: not before it
   was issued, not after it expired (the clip's start time comes with the upload).
2. ``head_turns`` - the head turned past ``turn_deg`` in the asked order, with a face
   tracked in at least ``min_face_fraction`` of the frames and the same identity
   throughout (a cut to another person fails here).
3. ``lip_sync`` - the mouth opening follows the loudness of the voice while the code
   is spoken (a still face under dubbed audio fails).
4. ``identity`` - the live face matches the reference embedding, and it is alone.
5. ``nonce`` - the challenge is known, unused and unexpired (consumed here, whatever
   the outcome, so every attempt needs a new challenge).

Head turns and the sign of yaw: :class:`avatar.types.HeadPose` yaw is positive when
the face turns to the image's left, i.e. the subject's right in an unmirrored camera
recording (what ``MediaRecorder`` uploads, even when the page shows a mirrored
preview). "left" in a challenge is the person's own left, so it is *negative* yaw;
set ``LivenessOptions.mirrored`` for clips recorded from a mirrored canvas.

Yaw per frame comes from :meth:`avatar.face.FaceAnalyzer.locate`: the 3-D mesh's pose
on the "mediapipe" backend, the 68 points' on "dlib".

Thresholds (defaults; measured on the synthetic clips of
:mod:`consent.liveness.testclips`, see ``tests/consent/test_liveness.py``, which runs
the face points on both backends):

- ``turn_deg`` 25: a drawn 38 degree turn reads 28-35 degrees from rest with dlib,
  28-31 on the mesh (the drawn face's depth is a generic template; the mesh reads a
  true 30 degree turn of a 3-D head as 25-30), a frontal face 0-4 (mesh: 2-3).
- ``identity_threshold`` 0.5: stricter than dlib's 0.6 "same person", as
  ``avatar.face.embedding`` advises for consent; the same synthetic face scores
  0.06-0.16 against its still, the impostor face 0.59-0.63 (both backends). Synthetic
  faces sit close together (most seeds are 0.2-0.47 from seed 0), so this separates
  only seed 3.
- ``stability_threshold`` 0.45: the largest distance between two sampled frames of the
  clip; a cut to the impostor scores 0.61-0.64.
- ``lip_sync_threshold`` 0.3 (Pearson correlation, best lag within +-0.2 s) and
  ``min_mouth_motion`` 0.02 (standard deviation of the inner-lip gap over the nose
  length): a talking face scores 0.89-0.96, a still face under dubbed audio moves
  0.001 and fails on motion before the correlation is read.

Everything here is blocking CPU work: call :func:`verify_clip` from a worker thread.
Raw frames live only inside the call; the result keeps numbers and words.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar.face import FaceAnalyzer, embedding_distance
from consent.ceremony.observe import box_of, closest, mouth_opening, scale_box, shrink
from consent.liveness.challenge import Challenge, NonceBook
from consent.liveness.clip import ASR_RATE, Clip, ClipError, ClipOptions, read_clip
from consent.liveness.result import POINTS, LivenessResult, Point
from voice.asr import ASROptions, WhisperASR
from voice.digits import read_code
from voice.types import AudioChunk

DIGITS_PROMPT = "The speaker reads out a code of single digits, like: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9."


@dataclass(frozen=True, slots=True)
class LivenessOptions:
    """Thresholds of the check (see the module docstring for how they were chosen).

    Attributes:
        turn_deg: a turn counts when |yaw| passes this many degrees.
        return_deg: between two turns the head must come back within this many degrees
            of its resting yaw.
        return_frames: and stay there for this many analysed frames in a row (one
            noisy landmark frame in the middle of a turn does not split it in two).
        mirrored: the clip was recorded mirrored (left and right swapped).
        min_face_fraction: a face must be tracked in at least this share of frames.
        max_track_gap_s: a face the detector misses (a turned head) is followed by its
            landmarks from the last box for at most this long.
        detect_max_side: frames are shrunk to this size for detection only.
        second_face_fraction: a second face in this share of frames fails the check.
        identity_threshold: largest embedding distance between the live face (median
            of the samples) and the reference.
        stability_threshold: largest distance between two samples of the clip.
        embed_samples: how many frames are embedded (spread over the clip).
        lip_sync_threshold: lowest correlation of mouth opening with voice loudness.
        min_mouth_motion: lowest standard deviation of the normalised mouth opening.
        max_lag_s: audio/video offsets searched for the best lip-sync correlation.
        clock_skew_s: tolerance between the uploader's clock and the server's.
        clip: decoding options.
    """

    turn_deg: float = 25.0
    return_deg: float = 12.0
    return_frames: int = 2
    mirrored: bool = False
    min_face_fraction: float = 0.9
    max_track_gap_s: float = 1.0
    detect_max_side: int = 320
    second_face_fraction: float = 0.1
    identity_threshold: float = 0.5
    stability_threshold: float = 0.45
    embed_samples: int = 10
    lip_sync_threshold: float = 0.3
    min_mouth_motion: float = 0.02
    max_lag_s: float = 0.2
    clock_skew_s: float = 2.0
    clip: ClipOptions = field(default_factory=ClipOptions)

    def __post_init__(self) -> None:
        if self.return_frames < 1:
            raise ValueError("LivenessOptions: return_frames must be at least 1")
        if not 0 < self.return_deg < self.turn_deg < 80:
            raise ValueError("LivenessOptions: need 0 < return_deg < turn_deg < 80")
        if not 0 < self.min_face_fraction <= 1:
            raise ValueError("LivenessOptions.min_face_fraction must be in (0, 1]")
        if self.embed_samples < 2:
            raise ValueError("LivenessOptions.embed_samples must be at least 2")


def asr_options(model: str = "") -> ASROptions:
    """Whisper options for reading codes: English, biased to digits, beam search.

    A beam of 5 rather than greedy decoding: on 150 Piper-read groups tiny.en got 3
    wrong greedy and 1 with the beam, for 35 ms more a group (414 against 379 ms).
    """
    return ASROptions(model=model, language="en", initial_prompt=DIGITS_PROMPT, beam_size=5)


def load_asr(model: str = "") -> WhisperASR:
    """A Whisper recogniser set up with :func:`asr_options` (blocking)."""
    return WhisperASR.load(asr_options(model))


@dataclass(slots=True)
class _Track:
    """Per-frame facts about the main face (no pixels)."""

    present: np.ndarray  # bool (n,)
    detected: np.ndarray  # bool (n,): found by the detector, not only followed
    yaw: np.ndarray  # degrees, nan where no face
    mouth: np.ndarray  # inner-lip gap / nose length, nan where no face
    extra_faces: np.ndarray  # int (n,)
    landmarks: list[np.ndarray | None]


def verify_clip(
    clip: str | Path | bytes,
    challenge: Challenge,
    reference_embedding: np.ndarray,
    now: float,
    analyzer: FaceAnalyzer,
    asr: WhisperASR,
    *,
    nonces: NonceBook,
    started_at: float | None = None,
    options: LivenessOptions | None = None,
) -> LivenessResult:
    """Check an uploaded clip against ``challenge`` (blocking; see the module doc).

    Args:
        clip: the uploaded file's path or bytes (WebM, MP4...).
        challenge: the challenge the clip answers.
        reference_embedding: the 128-d embedding of the photo to be animated.
        now: the server's time of the upload, seconds since the epoch.
        analyzer: a loaded face analyzer (detector, landmarks, embedder).
        asr: a loaded recogniser, ideally from :func:`load_asr`.
        nonces: where the challenge was registered; its nonce is consumed here.
        started_at: when the recording started (seconds since the epoch) as the upload
            states it; None assumes the clip ended at ``now``.
        options: thresholds; None uses the defaults.

    Returns:
        The decision. Show ``result.explain()`` to the person when it failed; store only
        the result (it holds no image or audio).
    """
    opts = options or LivenessOptions()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    verdict = nonces.consume(challenge.nonce, now)
    nonce_point = Point("nonce", bool(verdict), 1.0 if verdict else 0.0, verdict.reason)
    try:
        decoded = read_clip(clip, opts.clip)
    except ClipError as err:
        timings["total"] = time.perf_counter() - t_start
        reason = str(err)
        clip_point = Point("clip", False, 0.0, reason[:1].upper() + reason[1:])
        return LivenessResult(False, (clip_point, nonce_point), timings)
    timings["decode"] = time.perf_counter() - t_start
    points = _check(decoded, challenge, reference_embedding, now, analyzer, asr, started_at, opts)
    del decoded  # the frames and audio go now; the result keeps no pixels
    timings.update(points.pop("_timings"))  # type: ignore[arg-type]
    ordered = tuple(points[name] for name in POINTS[:-1]) + (nonce_point,)
    timings["total"] = time.perf_counter() - t_start
    return LivenessResult(all(p.passed for p in ordered), ordered, timings)


def _check(
    clip: Clip,
    challenge: Challenge,
    reference: np.ndarray,
    now: float,
    analyzer: FaceAnalyzer,
    asr: WhisperASR,
    started_at: float | None,
    opts: LivenessOptions,
) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    track = _track_faces(clip, analyzer, opts)
    timings["faces"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = _embed_samples(clip, track, analyzer, opts)
    timings["embed"] = time.perf_counter() - t0
    speech = _speech_span(clip)
    t0 = time.perf_counter()
    digits = _digits_point(clip, speech, challenge, now, asr, started_at, opts)
    timings["asr"] = time.perf_counter() - t0
    return {
        "digits": digits,
        "head_turns": _turns_point(clip, track, samples, challenge, opts),
        "lip_sync": _lip_point(clip, track, speech, opts),
        "identity": _identity_point(track, samples, reference, opts),
        "_timings": timings,
    }


# ------------------------------------------------------------------------- faces


def _track_faces(clip: Clip, analyzer: FaceAnalyzer, opts: LivenessOptions) -> _Track:
    backend = analyzer.backend
    n = len(clip.frames)
    present = np.zeros(n, bool)
    detected = np.zeros(n, bool)
    yaw = np.full(n, np.nan)
    mouth = np.full(n, np.nan)
    extra = np.zeros(n, int)
    marks: list[np.ndarray | None] = [None] * n
    last_box = None
    last_seen = -math.inf
    for i, frame in enumerate(clip.frames):
        scale = min(1.0, opts.detect_max_side / max(frame.shape[:2]))
        small = frame if scale == 1.0 else shrink(frame, scale)
        found = [scale_box(d.box, 1 / scale) for d in backend.detect(small, 0)]
        fresh = last_box is None or clip.times[i] - last_seen > opts.max_track_gap_s
        box = closest(found, last_box, near=not fresh)
        if found:
            size = (box or last_box).width
            others = [b for b in found if b is not box and b.width >= 0.5 * size]
            extra[i] = len(others)
        if box is not None:
            detected[i] = True
            last_seen = clip.times[i]
        elif not fresh:
            box = last_box  # the detector lost a turned head: follow it by its landmarks
        if box is None:
            continue
        located = analyzer.locate(frame, box)  # the mesh's pose on a mesh backend
        lm = located.landmarks
        present[i] = True
        marks[i] = lm
        last_box = box_of(lm) if not detected[i] else box
        if located.pose is not None:  # None: degenerate landmarks, no yaw this frame
            yaw[i] = located.pose.yaw
        mouth[i] = mouth_opening(lm)
    return _Track(present, detected, yaw, mouth, extra, marks)


def _embed_samples(
    clip: Clip, track: _Track, analyzer: FaceAnalyzer, opts: LivenessOptions
) -> list[tuple[float, np.ndarray]]:
    """Embeddings of up to ``embed_samples`` detected frames spread over the clip,
    the most frontal of each stretch."""
    idx = np.flatnonzero(track.detected)
    if len(idx) == 0:
        return []
    out = []
    for part in np.array_split(idx, min(opts.embed_samples, len(idx))):
        if len(part) == 0:
            continue
        yaw = np.abs(np.nan_to_num(track.yaw[part], nan=90.0))
        i = int(part[int(np.argmin(yaw))])
        lm = track.landmarks[i]
        if lm is not None:
            out.append((float(clip.times[i]), analyzer.embed(clip.frames[i], lm)))
    return out


# ------------------------------------------------------------------------ points


def _turns_point(
    clip: Clip,
    track: _Track,
    samples: list[tuple[float, np.ndarray]],
    challenge: Challenge,
    opts: LivenessOptions,
) -> Point:
    asked = tuple(challenge.turns)
    problems = []
    share = float(track.present.mean()) if len(track.present) else 0.0
    if share < opts.min_face_fraction:
        problems.append(
            f"we saw your face in only {share:.0%} of the clip (at least "
            f"{opts.min_face_fraction:.0%} is needed): keep your face in view all the time"
        )
    change = _identity_change(samples, opts.stability_threshold)
    if change is not None:
        t_a, t_b, dist = change
        problems.append(
            f"the face at {t_b:.1f} s is not the face at {t_a:.1f} s (distance {dist:.2f}, "
            f"at most {opts.stability_threshold:.2f}): the same person must stay in view "
            "for the whole clip"
        )
    made = _detect_turns(track.yaw, opts)
    matched = 0
    for want, got in zip(asked, made, strict=False):
        if want != got[0]:
            break
        matched += 1
    score = matched / len(asked)
    if not made:
        peak = float(np.nanmax(np.abs(track.yaw))) if np.any(track.present) else 0.0
        problems.append(
            f"we saw no head turn (at most {peak:.0f} degrees, {opts.turn_deg:.0f} needed): "
            f"turn your head {', then '.join(asked)}, well to each side"
        )
    elif tuple(t for t, _ in made) != asked:
        seen = ", ".join(f"{t} ({abs(p):.0f} degrees)" for t, p in made)
        problems.append(
            f"we saw the turns {seen} but you were asked to turn {', '.join(asked)}, in that order"
        )
    if problems:
        reason = "; ".join(problems)
        return Point("head_turns", False, score, reason[0].upper() + reason[1:])
    peaks = ", ".join(f"{t} {abs(p):.0f} degrees" for t, p in made)
    return Point("head_turns", True, score, f"The head turned as asked ({peaks}).")


def _detect_turns(yaw: np.ndarray, opts: LivenessOptions) -> list[tuple[str, float]]:
    """Excursions past ``turn_deg`` from the resting yaw, as (direction, peak yaw)."""
    valid = yaw[~np.isnan(yaw)]
    if len(valid) == 0:
        return []
    rest = float(np.clip(np.median(valid), -10.0, 10.0))
    made: list[tuple[str, float]] = []
    current: str | None = None
    settled = 0  # frames in a row back near rest
    for value in valid - rest:
        settled = settled + 1 if abs(value) < opts.return_deg else 0
        side = None
        if value <= -opts.turn_deg:
            side = "left"  # negative yaw: the subject's left (unmirrored)
        elif value >= opts.turn_deg:
            side = "right"
        if side is not None and opts.mirrored:
            side = "right" if side == "left" else "left"
        if side is not None and side != current:
            made.append((side, value))
            current = side
        elif side is not None and abs(value) > abs(made[-1][1]):
            made[-1] = (side, value)
        elif settled >= opts.return_frames:
            current = None
    return made


def _identity_change(
    samples: list[tuple[float, np.ndarray]], threshold: float
) -> tuple[float, float, float] | None:
    """The two sampled moments whose faces differ most, when beyond ``threshold``."""
    worst = None
    for a in range(len(samples)):
        for b in range(a + 1, len(samples)):
            dist = embedding_distance(samples[a][1], samples[b][1])
            if dist > threshold and (worst is None or dist > worst[2]):
                worst = (samples[a][0], samples[b][0], dist)
    return worst


def _identity_point(
    track: _Track,
    samples: list[tuple[float, np.ndarray]],
    reference: np.ndarray,
    opts: LivenessOptions,
) -> Point:
    problems = []
    n = max(len(track.extra_faces), 1)
    crowded = float((track.extra_faces > 0).sum()) / n
    if crowded >= opts.second_face_fraction:
        problems.append(
            f"another face was in view in {crowded:.0%} of the clip: only the person "
            "giving consent may be in the picture"
        )
    if not samples:
        return Point("identity", False, math.inf, "We could not see a face to compare.")
    dists = [embedding_distance(e, reference) for _, e in samples]
    dist = float(np.median(dists))
    if dist >= opts.identity_threshold:
        problems.append(
            f"the face in the clip does not match the photo (distance {dist:.2f}, below "
            f"{opts.identity_threshold:.2f} needed): the person in the photo must record "
            "the clip"
        )
    if problems:
        reason = "; ".join(problems)
        return Point("identity", False, dist, reason[0].upper() + reason[1:])
    return Point("identity", True, dist, f"The face matches the photo (distance {dist:.2f}).")


def _speech_span(clip: Clip) -> tuple[float, float] | None:
    """Start and end (clip seconds) of the voiced part, from a 20 ms energy envelope."""
    rms, hop = _rms(clip.audio, 0.02)
    if len(rms) == 0:
        return None
    floor = float(np.percentile(rms, 10))
    top = float(np.percentile(rms, 98))
    if top < 0.01 or top < 4 * floor:
        return None
    active = np.flatnonzero(rms > floor + 0.15 * (top - floor))
    if len(active) == 0:
        return None
    start = clip.audio_start + active[0] * hop
    end = clip.audio_start + (active[-1] + 1) * hop
    return start, end


def _rms(audio: np.ndarray, window_s: float) -> tuple[np.ndarray, float]:
    size = int(window_s * ASR_RATE)
    n = len(audio) // size
    if n == 0:
        return np.zeros(0), window_s
    blocks = audio[: n * size].reshape(n, size)
    return np.sqrt((blocks.astype(np.float64) ** 2).mean(1)), window_s


def _digits_point(
    clip: Clip,
    speech: tuple[float, float] | None,
    challenge: Challenge,
    now: float,
    asr: WhisperASR,
    started_at: float | None,
    opts: LivenessOptions,
) -> Point:
    code = " ".join(challenge.digits)
    if speech is None:
        return Point(
            "digits", False, 0.0, f"We heard no speech: read the code {code} aloud, clearly."
        )
    a = max(0, int((speech[0] - clip.audio_start - 0.3) * ASR_RATE))
    b = int((speech[1] - clip.audio_start + 0.3) * ASR_RATE)
    transcript = asr.transcribe_sync(AudioChunk(clip.audio[a:b], ASR_RATE))
    heard = read_code(transcript.text, challenge.digits)
    problems = []
    if heard != challenge.digits:
        if heard:
            problems.append(f"we heard {' '.join(heard)} but the code was {code}")
        else:
            problems.append(
                f"we heard no digits (we heard {transcript.text!r}); the code was {code}"
            )
    begin = now - clip.duration if started_at is None else started_at
    spoken_from, spoken_to = begin + speech[0], begin + speech[1]
    if spoken_from < challenge.issued_at - 0.0:
        problems.append(
            f"the code was spoken {challenge.issued_at - spoken_from:.1f} s before the "
            "challenge was issued: record after the code is shown"
        )
    if spoken_to > challenge.expires_at:
        problems.append(
            f"the code was spoken {spoken_to - challenge.expires_at:.1f} s after the "
            "challenge expired: ask for a new code"
        )
    if begin + clip.duration > now + opts.clock_skew_s:
        problems.append(
            f"the clip claims to end {begin + clip.duration - now:.1f} s after it was "
            "uploaded: check the device's clock and record again"
        )
    score = _share_right(heard, challenge.digits)
    if problems:
        reason = "; ".join(problems)
        return Point("digits", False, score, reason[0].upper() + reason[1:] + ".")
    return Point("digits", True, score, f"We heard the code {code}, in time.")


def _share_right(heard: str, digits: str) -> float:
    right = sum(h == d for h, d in zip(heard, digits, strict=False))
    return right / max(len(digits), len(heard), 1)


def _lip_point(
    clip: Clip, track: _Track, speech: tuple[float, float] | None, opts: LivenessOptions
) -> Point:
    if speech is None:
        return Point("lip_sync", False, 0.0, "We heard no speech to compare the lips with.")
    times = clip.times
    inside = (times >= speech[0]) & (times <= speech[1]) & ~np.isnan(track.mouth)
    if inside.sum() < 5:
        return Point("lip_sync", False, 0.0, "We could not see your mouth while you read the code.")
    mouth = track.mouth[inside]
    motion = float(mouth.std())
    if motion < opts.min_mouth_motion:
        return Point(
            "lip_sync",
            False,
            0.0,
            f"Your lips barely moved while the code was spoken (movement {motion:.3f}, at "
            f"least {opts.min_mouth_motion:.3f} needed): the voice must come from the "
            "face in the video.",
        )
    rms, hop = _rms(clip.audio, 0.02)
    env_t = clip.audio_start + (np.arange(len(rms)) + 0.5) * hop
    smooth = np.convolve(rms, np.ones(5) / 5, mode="same")  # about one video frame
    best = -1.0
    step = 1.0 / opts.clip.analysis_fps / 2
    for lag in np.arange(-opts.max_lag_s, opts.max_lag_s + 1e-9, step):
        env = np.interp(times[inside] + lag, env_t, smooth)
        if env.std() > 0:
            best = max(best, float(np.corrcoef(mouth, env)[0, 1]))
    if best < opts.lip_sync_threshold:
        return Point(
            "lip_sync",
            False,
            best,
            f"Your lips did not move in time with the voice (match {best:.2f}, at least "
            f"{opts.lip_sync_threshold:.2f} needed): the voice must come from the face "
            "in the video.",
        )
    return Point("lip_sync", True, best, f"The lips moved with the voice (match {best:.2f}).")


__all__ = [
    "DIGITS_PROMPT",
    "POINTS",
    "LivenessOptions",
    "LivenessResult",
    "Point",
    "asr_options",
    "load_asr",
    "verify_clip",
]
