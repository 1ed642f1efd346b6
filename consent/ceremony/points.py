"""The ceremony's points, judged from what it gathered (pure: no models, no clock).

:class:`consent.ceremony.engine.Ceremony` gathers the evidence while the person acts
(the prompts it revealed and their answers, per-frame observations, identity
embeddings) and calls :func:`judge` once, at the end. Every point explains itself in
plain words; the list and what each stops is in the engine's module doc and in
``docs/consent-security.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from avatar.face import embedding_distance
from consent.ceremony.depth import DepthOptions, explain_turn
from consent.ceremony.light import LightOptions, LightResult, check_light
from consent.ceremony.observe import FrameObs
from consent.ceremony.plan import CeremonyPlan, Prompt
from consent.liveness.result import Point, sentence
from voice.vad import VADOptions


@dataclass(frozen=True, slots=True)
class CeremonyOptions:
    """Timing and thresholds of a ceremony (how each was chosen:
    ``docs/consent-security.md``).

    Attributes:
        reaction_min_s: an answer beginning sooner after its prompt was shown is refused
            (it was known in advance).
        reaction_max_s: an answer beginning later is refused (time to forge it).
        gap_s: (shortest, longest) random wait before each prompt.
        settle_s: the face must be in view this long before the first prompt.
        face_timeout_s: no face for this long from the start ends the ceremony.
        answer_timeout_s: a prompt unanswered (and, for a turn, not returned from) this
            long after it was sent ends the ceremony.
        ack_timeout_s: the page must acknowledge showing a prompt within this long.
        turn_deg: a turn counts when the yaw passes this many degrees from rest.
        onset_deg: a turn has begun when the yaw leaves rest by this many degrees.
        return_deg: back from a turn when within this many degrees of rest ...
        return_frames: ... for this many frames in a row.
        mirrored: the page sends a mirrored picture (left and right swapped).
        identity_threshold: largest embedding distance of the live face to the photo
            (bench: the same simulated person 0.10-0.29; another person 0.58).
        stability_threshold: largest distance between two embedded frames.
        embed_every_s: a frontal frame is embedded at most this often ...
        max_embeds: ... and at most this many times.
        lip_sync_threshold: lowest correlation of mouth opening with voice loudness
            (bench: simulated speakers 0.31-0.98 over 40 ceremonies; a face that does not
            speak under a robot voice fails first on ``min_mouth_motion``).
        min_mouth_motion: lowest standard deviation of the mouth opening while speaking.
        max_lip_lag_s: audio/video offsets searched for the best lip-sync correlation.
        min_face_fraction: share of frames with a face, at least.
        second_face_fraction: another face in this share of frames fails identity.
        max_jump: largest move of the face's centre between two consecutive frames,
            in face widths per 1/15 s (bench: simulated people 0.09-0.18; splices to 0.36).
        light: the screen-light check.
        depth: the 3-D check.
        vad: speech detection for the digit groups.
    """

    reaction_min_s: float = 0.25
    reaction_max_s: float = 2.0
    gap_s: tuple[float, float] = (0.4, 1.2)
    settle_s: float = 0.6
    face_timeout_s: float = 10.0
    answer_timeout_s: float = 6.0
    ack_timeout_s: float = 1.5
    turn_deg: float = 15.0
    onset_deg: float = 5.0
    return_deg: float = 9.0
    return_frames: int = 2
    mirrored: bool = False
    identity_threshold: float = 0.5
    stability_threshold: float = 0.45
    embed_every_s: float = 0.8
    max_embeds: int = 10
    lip_sync_threshold: float = 0.2
    min_mouth_motion: float = 0.02
    max_lip_lag_s: float = 0.2
    min_face_fraction: float = 0.85
    second_face_fraction: float = 0.1
    max_jump: float = 0.3
    light: LightOptions = field(default_factory=LightOptions)
    depth: DepthOptions = field(default_factory=DepthOptions)
    vad: VADOptions = field(
        default_factory=lambda: VADOptions(min_silence_ms=450, min_speech_ms=120, speech_pad_ms=200)
    )

    def __post_init__(self) -> None:
        if not 0 < self.reaction_min_s < self.reaction_max_s:
            raise ValueError("CeremonyOptions: need 0 < reaction_min_s < reaction_max_s")
        if not 0 <= self.gap_s[0] <= self.gap_s[1]:
            raise ValueError("CeremonyOptions.gap_s must be (shortest, longest), both >= 0")
        if not 0 < self.onset_deg < self.return_deg < self.turn_deg < 80:
            raise ValueError("CeremonyOptions: need 0 < onset_deg < return_deg < turn_deg < 80")


@dataclass(slots=True)
class Answer:
    """One revealed prompt and what came of it (server seconds; None: not yet)."""

    prompt: Prompt
    sent_at: float
    ack_at: float | None = None
    shown_at: float | None = None
    onset: float | None = None  # server time the answer began
    done_at: float | None = None
    heard: str | None = None  # digits: what Whisper heard
    transcript: str = ""
    speech: tuple[float, float] | None = None  # digits: voiced span (server seconds)
    envelope: tuple[np.ndarray, np.ndarray] | None = None  # digits: (times, rms)
    peak_yaw: float = 0.0  # turn: the largest yaw towards the asked side
    track: list[tuple[float, float]] = field(default_factory=list)  # turn: (t, yaw towards)
    frontal: tuple[np.ndarray, np.ndarray] | None = None  # turn: grey, landmarks
    peak: tuple[np.ndarray, np.ndarray] | None = None
    settled: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Evidence:
    """Everything a ceremony gathered, for judging.

    Attributes:
        plan: what was to be asked.
        options: the thresholds.
        answers: the prompts revealed so far, in order, with their answers.
        frames: one observation per analysed frame.
        embeds: (time, identity embedding) of frontal frames.
        reference: the photo's embedding.
        started: server seconds when the ceremony began.
    """

    plan: CeremonyPlan
    options: CeremonyOptions
    answers: Sequence[Answer]
    frames: Sequence[FrameObs]
    embeds: Sequence[tuple[float, np.ndarray]]
    reference: np.ndarray
    started: float | None

    def of(self, kind: str) -> list[Answer]:
        return [a for a in self.answers if a.prompt.kind == kind]

    def face_share(self) -> float:
        if not self.frames:
            return 0.0
        return sum(f.present for f in self.frames) / len(self.frames)


def judge(ev: Evidence) -> dict[str, Point]:
    """Every point but the nonce (the caller's), by name."""
    return {
        "digits": digits_point(ev),
        "reaction": reaction_point(ev),
        "head_turns": turns_point(ev),
        "screen_light": light_point(ev),
        "depth": depth_point(ev),
        "lip_sync": lip_point(ev),
        "identity": identity_point(ev),
        "continuity": continuity_point(ev),
    }


def digits_point(ev: Evidence) -> Point:
    groups = ev.of("digits")
    wrong = []
    right = 0
    for s in groups:
        if s.heard == s.prompt.digits:
            right += 1
        elif s.done_at is not None:
            said = " ".join(s.heard) if s.heard else f"no digits ({s.transcript.strip()!r})"
            wrong.append(f"we heard {said} for {' '.join(s.prompt.digits)}")
    total = sum(1 for p in ev.plan.prompts if p.kind == "digits")
    score = right / total
    if wrong:
        return Point(
            "digits",
            False,
            score,
            sentence("; ".join(wrong) + ": read each group aloud, clearly"),
        )
    if right < total:
        return Point("digits", False, score, f"Only {right} of {total} digit groups were read.")
    return Point("digits", True, score, f"We heard every group of the code ({ev.plan.digits}).")


def reaction_point(ev: Evidence) -> Point:
    opts = ev.options
    problems = []
    times = []
    for s in ev.answers:
        if s.prompt.kind == "flash" or s.onset is None:
            continue
        shown = s.shown_at if s.shown_at is not None else s.sent_at
        rt = s.onset - shown
        times.append(rt)
        what = f"'{s.prompt.text()}'"
        if rt < opts.reaction_min_s:
            problems.append(
                f"your answer to {what} began {rt:.2f} s after it was shown, sooner than "
                f"a person can react ({opts.reaction_min_s:.2f} s)"
            )
        elif rt > opts.reaction_max_s:
            problems.append(
                f"your answer to {what} began {rt:.2f} s after it was shown (at most "
                f"{opts.reaction_max_s:.1f} s): answer each prompt as soon as it appears"
            )
    if not times:
        return Point("reaction", False, 0.0, "We saw no answer to any prompt.")
    score = float(np.median(times))
    if problems:
        return Point("reaction", False, score, sentence("; ".join(problems)))
    return Point(
        "reaction",
        True,
        score,
        f"Every answer began in a human time ({min(times):.2f}-{max(times):.2f} s).",
    )


def turns_point(ev: Evidence) -> Point:
    opts = ev.options
    turns = ev.of("turn")
    total = len(ev.plan.turns)
    problems = []
    made = 0
    for s in turns:
        if s.peak_yaw < opts.turn_deg:
            problems.append(
                f"asked to turn {s.prompt.direction}, you turned {s.peak_yaw:.0f} degrees "
                f"({opts.turn_deg:.0f} needed)"
            )
        elif s.done_at is None:
            problems.append(f"after turning {s.prompt.direction} you did not turn back")
        else:
            made += 1
    share = ev.face_share()
    if share < opts.min_face_fraction:
        problems.append(
            f"we saw your face in only {share:.0%} of the frames (at least "
            f"{opts.min_face_fraction:.0%}): keep your face in view"
        )
    score = made / total
    if problems or made < total:
        if not problems:
            problems.append(f"only {made} of {total} turns were made")
        return Point("head_turns", False, score, sentence("; ".join(problems)))
    peaks = ", ".join(f"{s.prompt.direction} {s.peak_yaw:.0f} degrees" for s in turns)
    return Point("head_turns", True, score, f"The head turned as asked ({peaks}).")


def light_of(ev: Evidence) -> LightResult | None:
    """The screen-light measurement (None before the flashes were shown)."""
    flashes = ev.of("flash")
    if not flashes or flashes[0].shown_at is None:
        return None
    return check_light(ev.frames, flashes[0].prompt, flashes[0].shown_at, ev.options.light)


def light_point(ev: Evidence) -> Point:
    found = light_of(ev)
    if found is None:
        return Point(
            "screen_light", False, 0.0, "The screen did not flash (the page did not show it)."
        )
    return Point("screen_light", found.passed, found.correlation, found.reason)


def depths_of(ev: Evidence) -> list[float]:
    """How well each turn with a frontal and a peak frame is explained by a warp."""
    out = []
    for s in ev.of("turn"):
        if s.frontal is None or s.peak is None or s.peak_yaw < ev.options.turn_deg:
            continue
        (a, _), (b, lb) = s.frontal, s.peak
        if a.shape == b.shape:
            out.append(explain_turn(a, b, lb, ev.options.depth))
    return out


def depth_point(ev: Evidence) -> Point:
    limit = ev.options.depth.max_explained
    depths = depths_of(ev)
    if not depths:
        return Point("depth", False, 1.0, "We saw no head turn to judge.")
    worst = max(depths)
    if worst >= limit:
        return Point(
            "depth",
            False,
            worst,
            f"Your head turn looked like a flat picture being bent (explained {worst:.3f}, "
            f"below {limit:.3f} needed): the camera must see you live.",
        )
    return Point("depth", True, worst, f"The head turned in 3-D (explained {worst:.3f}).")


def lip_point(ev: Evidence) -> Point:
    opts = ev.options
    mouths, envs = [], []
    for s in ev.of("digits"):
        if s.speech is None or s.envelope is None:
            continue
        start, end = s.speech
        inside = [f for f in ev.frames if start <= f.t <= end and not math.isnan(f.mouth)]
        if len(inside) < 3:
            continue
        mouths.append((np.array([f.t for f in inside]), np.array([f.mouth for f in inside])))
        envs.append(s.envelope)
    if not mouths:
        return Point(
            "lip_sync", False, 0.0, "We could not see your mouth while you read the digits."
        )
    motion = float(np.concatenate([m for _, m in mouths]).std())
    if motion < opts.min_mouth_motion:
        return Point(
            "lip_sync",
            False,
            0.0,
            f"Your lips barely moved while the digits were spoken (movement {motion:.3f}, at "
            f"least {opts.min_mouth_motion:.3f}): the voice must come from the face in view.",
        )
    best = -1.0
    for lag in np.arange(-opts.max_lip_lag_s, opts.max_lip_lag_s + 1e-9, 1 / 60):
        a = np.concatenate([m for _, m in mouths])
        b = np.concatenate(
            [np.interp(t + lag, et, ev) for (t, _), (et, ev) in zip(mouths, envs, strict=True)]
        )
        if a.std() > 0 and b.std() > 0:
            best = max(best, float(np.corrcoef(a, b)[0, 1]))
    if best < opts.lip_sync_threshold:
        return Point(
            "lip_sync",
            False,
            best,
            f"Your lips did not move in time with the voice (match {best:.2f}, at least "
            f"{opts.lip_sync_threshold:.2f}): the voice must come from the face in view.",
        )
    return Point("lip_sync", True, best, f"The lips moved with the voice (match {best:.2f}).")


def identity_point(ev: Evidence) -> Point:
    opts = ev.options
    problems = []
    n = max(len(ev.frames), 1)
    crowded = sum(1 for f in ev.frames if f.extra_faces > 0) / n
    if crowded >= opts.second_face_fraction:
        problems.append(
            f"another face was in view in {crowded:.0%} of the frames: only you may be "
            "in the picture"
        )
    if len(ev.embeds) < 2:
        return Point(
            "identity",
            False,
            math.inf,
            "We could not see your face well enough to compare it with the photo.",
        )
    dists = [embedding_distance(e, ev.reference) for _, e in ev.embeds]
    dist = float(np.median(dists))
    if dist >= opts.identity_threshold:
        problems.append(
            f"the face does not match the photo (distance {dist:.2f}, below "
            f"{opts.identity_threshold:.2f} needed)"
        )
    worst = max(
        (embedding_distance(a, b), ta, tb)
        for i, (ta, a) in enumerate(ev.embeds)
        for tb, b in ev.embeds[i + 1 :]
    )
    if worst[0] > opts.stability_threshold:
        problems.append(
            f"the face at {worst[2] - (ev.started or 0):.1f} s is not the face at "
            f"{worst[1] - (ev.started or 0):.1f} s: the same person must stay in view"
        )
    if problems:
        return Point("identity", False, dist, sentence("; ".join(problems)))
    return Point("identity", True, dist, f"The face matches the photo (distance {dist:.2f}).")


def continuity_point(ev: Evidence) -> Point:
    worst = 0.0
    at = 0.0
    prev: FrameObs | None = None
    for f in ev.frames:
        if not f.present or f.landmarks is None:
            prev = None
            continue
        if prev is not None and prev.landmarks is not None and f.t > prev.t:
            width = max(prev.face_width, f.face_width, 1.0)
            shift = float(np.linalg.norm(f.landmarks.mean(0) - prev.landmarks.mean(0))) / width
            rate = shift / max((f.t - prev.t) * 15.0, 1.0)
            scale = abs(math.log(max(f.face_width, 1.0) / max(prev.face_width, 1.0)))
            jump = max(rate, scale)
            if jump > worst:
                worst, at = jump, f.t
        prev = f
    if worst > ev.options.max_jump:
        return Point(
            "continuity",
            False,
            worst,
            f"The picture jumped at {at - (ev.started or 0):.1f} s (the face moved "
            f"{worst:.2f} face widths at once): the video must be one unbroken take.",
        )
    return Point("continuity", True, worst, "The video was one unbroken take.")


__all__ = [
    "Answer",
    "CeremonyOptions",
    "Evidence",
    "depths_of",
    "judge",
    "light_of",
]
