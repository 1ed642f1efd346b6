"""The attack classes of the ceremony (ISO/IEC 30107-3: presentation attacks), each a
generator of an :class:`consent.ceremony.simulate.Actor`.

Every attacker here is automated and as quick as a person: it reads each prompt off
the page the moment it is shown and answers after a human reaction time, with
eSpeak NG reading the digits (a robot voice the attacker controls). What each one has:

- ``still_photo``: the public photo of the person, held still.
- ``photo_mouth``: the photo, its mouth warped open with the voice's loudness (and a
  dark mouth drawn between the lips).
- ``warp_2d``: the photo turned by a 2-D warp (the face squeezed and slid sideways,
  a flat card rotating) plus the mouth warp.
- ``warp_25d``: the photo turned by a 2.5-D mesh warp: its own 68 landmarks given a
  generic face depth, rotated about the vertical axis by up to 36 degrees and
  projected, the photo piecewise-affine-warped onto them (head outline and frame
  border in the mesh too), plus the mouth warp.
- ``replay``: a genuine ceremony of the person, recorded for an earlier challenge,
  played from the start.
- ``screen_replay``: that recording shown on a screen and filmed: bezel, moire, the
  display's gamma and blur; the enrolment page's flashes reflect off the display's
  glass uniformly.
- ``splice``: two genuine recordings cut together live: for each prompt the attacker
  plays a recorded answer of the same kind (a digit group, a turn to the same side,
  a flash sequence), starting after a human reaction time.
- ``tts_voice``: the live person turns and reflects the light but does not speak; the
  digits come from eSpeak NG.
- ``tinted_warp``: ``warp_25d`` that also tints the whole frame with each flash's colour,
  in time (read from the page).

The face mesh, depth template and warps here are the attacker's; the 3-D check
(:mod:`consent.ceremony.depth`) shares none of it (it explains a turn by a dense optical
flow), so the suite does not test the check against itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import cv2
import numpy as np

from consent.ceremony.actors import LivePerson, Performer, Recording, persona, record
from consent.ceremony.plan import Prompt, plan_ceremony
from consent.ceremony.simulate import Actor, espeak_says

ATTACKS = (
    "still_photo",
    "photo_mouth",
    "warp_2d",
    "warp_25d",
    "replay",
    "screen_replay",
    "splice",
    "tts_voice",
    "tinted_warp",
)
ATTACK_TURN_DEG = 36.0
ROBOT = (0.6, 0.9)  # the attacker's tool answers after 0.6-0.9 s


def robot_voice(text: str) -> np.ndarray:
    return espeak_says(text, 150, 50)


def generic_depth(lm: np.ndarray) -> np.ndarray:
    """Depth (towards the camera, in face widths) of each of the 68 landmarks for a
    generic face: the nose stands out, the jaw and eye corners fall back."""
    cx = lm[:, 0].mean()
    half = max(float(np.ptp(lm[:, 0])) / 2, 1.0)
    d = np.abs(lm[:, 0] - cx) / half
    z = 0.25 * np.sqrt(np.clip(1.0 - 0.8 * d**2, 0.0, 1.0))  # an ellipsoid
    z[27:31] += np.array([0.04, 0.08, 0.12, 0.18])  # nose bridge to tip
    z[31:36] += 0.08
    z[48:68] += 0.04
    return z * 2 * half


class PhotoPuppet:
    """An attacker's tool that animates one photo (see the module doc for the modes).

    Args:
        photo: the public photo, RGB uint8 (it fills the frame).
        landmarks: its 68 landmarks (the attacker ran a landmark detector).
        mode: "still", "mouth", "2d" or "25d".
        tint: also tint the frame with each flash colour.
        seed: seeds reaction times and sensor noise.
    """

    def __init__(
        self, photo: np.ndarray, landmarks: np.ndarray, mode: str, tint: bool = False, seed: int = 0
    ) -> None:
        if mode not in ("still", "mouth", "2d", "25d"):
            raise ValueError(f"PhotoPuppet: unknown mode {mode!r}")
        self.photo = photo
        self.lm = landmarks.astype(np.float32)
        self.mode = mode
        self.tint = tint
        turn = 0.0 if mode in ("still", "mouth") else ATTACK_TURN_DEG
        self.body = Performer(ROBOT, turn, robot_voice, random.Random(seed))
        self._noise = np.random.default_rng([seed, 9])
        h, w = photo.shape[:2]
        self._frame_pts = np.array(
            [
                (0, 0),
                (w / 2, 0),
                (w - 1, 0),
                (0, h / 2),
                (w - 1, h / 2),
                (0, h - 1),
                (w / 2, h - 1),
                (w - 1, h - 1),
            ],
            np.float32,
        )
        width = float(np.ptp(self.lm[:, 0]))
        cx, cy = self.lm.mean(0)
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        self._outline = np.stack(
            [cx + 0.85 * width * np.cos(angles), cy - 0.1 * width + 0.95 * width * np.sin(angles)],
            1,
        ).astype(np.float32)
        self._depth = generic_depth(self.lm)
        self._cx = float(cx)

    def on_prompt(self, prompt: Prompt, shown_at: float) -> None:
        self.body.on_prompt(prompt, shown_at)

    def audio(self, t: float, n: int) -> np.ndarray:
        return self.body.audio(t, n, self._noise)

    def frame(self, t: float) -> np.ndarray:
        mouth = self.body.mouth(t) if self.mode != "still" else 0.0
        yaw = self.body.yaw(t) if self.mode in ("2d", "25d") else 0.0
        if self.mode == "still":
            out = self.photo.astype(np.float32)
        else:
            out = self._warp(math.radians(yaw), mouth).astype(np.float32)
        if self.tint:
            out = out * 0.92 + 255.0 * 0.12 * np.asarray(self.body.screen(t), np.float32)
        out += self._noise.normal(0.0, 1.5, out.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _warp(self, yaw: float, mouth: float) -> np.ndarray:
        dst = self.lm.copy()
        gap = mouth * 0.12 * float(np.ptp(self.lm[:, 1]))
        dst[[65, 66, 67], 1] += gap * np.array([0.8, 1.0, 0.8])
        dst[[55, 56, 57, 58, 59], 1] += gap * np.array([0.8, 0.95, 1.0, 0.95, 0.8])
        dst[5:12, 1] += gap * 0.6 * np.array([0.3, 0.6, 0.9, 1.0, 0.9, 0.6, 0.3])
        outline = self._outline.copy()
        if self.mode == "25d":
            z = self._depth
            dst[:, 0] = self._cx + math.cos(yaw) * (dst[:, 0] - self._cx) - math.sin(yaw) * z
            zo = 0.5 * float(np.ptp(self.lm[:, 0])) * 0.2
            outline[:, 0] = (
                self._cx + math.cos(yaw) * (outline[:, 0] - self._cx) - math.sin(yaw) * zo
            )
        elif self.mode == "2d":
            shift = -math.sin(yaw) * 0.35 * float(np.ptp(self.lm[:, 0]))
            dst[:, 0] = self._cx + math.cos(yaw) * (dst[:, 0] - self._cx) + shift
            outline[:, 0] += shift * 0.5
        src = np.concatenate([self.lm, self._outline, self._frame_pts])
        dst_all = np.concatenate([dst, outline, self._frame_pts])
        out = piecewise_affine(self.photo, src, dst_all)
        if mouth > 0.05:
            inner = np.round(dst[60:68] * 4).astype(np.int32)
            cv2.fillPoly(out, [inner], (60, 20, 24), cv2.LINE_AA, 2)
        return out


def piecewise_affine(image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Warp ``image`` so that points ``src`` move to ``dst`` (Delaunay of ``dst``)."""
    h, w = image.shape[:2]
    rect = (-w, -h, 3 * w, 3 * h)
    subdiv = cv2.Subdiv2D(rect)
    keys = {}
    for i, (x, y) in enumerate(dst):
        key = (round(float(x), 2), round(float(y), 2))
        if key not in keys:
            keys[key] = i
            subdiv.insert((float(x), float(y)))
    out = image.copy()
    for tri in subdiv.getTriangleList().reshape(-1, 3, 2):
        ids = [keys.get((round(float(x), 2), round(float(y), 2))) for x, y in tri]
        if None in ids:
            continue
        d = dst[ids].astype(np.float32)
        s = src[ids].astype(np.float32)
        x0, y0 = np.floor(d.min(0)).astype(int)
        x1, y1 = np.ceil(d.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = cv2.getAffineTransform(s, (d - (x0, y0)).astype(np.float32))
        patch = cv2.warpAffine(
            image, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round(d - (x0, y0)).astype(np.int32), 1)
        sel = mask.astype(bool)
        out[y0:y1, x0:x1][sel] = patch[sel]
    return out


class Replay:
    """Plays a recording from its start, whatever the page shows; optionally as filmed
    off a screen (bezel, moire, gamma, blur, and the page's flashes on the glass)."""

    def __init__(self, recording: Recording, on_screen: bool = False, seed: int = 0) -> None:
        self.rec = recording
        self.on_screen = on_screen
        self.body = Performer(ROBOT, 0.0, robot_voice, random.Random(seed))
        self._noise = np.random.default_rng([seed, 11])
        h, w = recording.frames[0].shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._moire = 6.0 * np.sin(0.9 * xx + 0.35 * yy) * np.sin(0.05 * xx - 0.8 * yy)

    def on_prompt(self, prompt: Prompt, shown_at: float) -> None:
        if prompt.kind == "flash":
            self.body.on_prompt(prompt, shown_at)

    def frame(self, t: float) -> np.ndarray:
        img = self.rec.frame_at(t)
        if not self.on_screen:
            return img
        return film_screen(img, self._moire, self.body.screen(t), self._noise)

    def audio(self, t: float, n: int) -> np.ndarray:
        return self.rec.audio_at(t, n)


def film_screen(
    img: np.ndarray, moire: np.ndarray, flash, noise: np.random.Generator
) -> np.ndarray:
    """``img`` as a camera sees it on a display: inside a bezel, with moire, gamma 1.3,
    blur, and ``flash`` reflected uniformly off the glass."""
    h, w = img.shape[:2]
    bx, by = int(0.07 * w), int(0.07 * h)
    inner = cv2.resize(img, (w - 2 * bx, h - 2 * by), interpolation=cv2.INTER_AREA)
    screen = 255.0 * (inner.astype(np.float32) / 255.0) ** 1.3
    screen = cv2.GaussianBlur(screen, (0, 0), 0.8)
    out = np.full((h, w, 3), 22.0, np.float32)  # the bezel
    out[by : h - by, bx : w - bx] = screen
    out += moire[..., None]
    out += 255.0 * 0.03 * np.asarray(flash, np.float32)
    out += noise.normal(0.0, 1.5, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


class Splice:
    """Answers each prompt live with a recorded answer of the same kind (see module doc)."""

    def __init__(self, recordings: list[Recording], seed: int = 0) -> None:
        self.recs = recordings
        self.rng = random.Random(seed)
        self.clips: list[tuple[float, Recording, float]] = []  # (start, rec, rec offset)
        self.idle = (recordings[0], 0.2)

    def on_prompt(self, prompt: Prompt, shown_at: float) -> None:
        options = [
            (rec, at)
            for rec in self.recs
            for at, p in rec.events
            if p.kind == prompt.kind and (p.kind != "turn" or p.direction == prompt.direction)
        ]
        if not options:
            return
        rec, at = self.rng.choice(options)
        lead = 0.0 if prompt.kind == "flash" else 0.3  # cut in just before the recorded answer
        self.clips.append((shown_at + self.rng.uniform(*ROBOT) - 0.6, rec, at - lead))

    def _source(self, t: float) -> tuple[Recording, float]:
        for start, rec, offset in reversed(self.clips):
            if t >= start:
                u = offset + (t - start)
                if u < rec.duration:
                    return rec, u
        rec, at = self.idle
        return rec, at + (t % 0.5)

    def frame(self, t: float) -> np.ndarray:
        rec, u = self._source(t)
        return rec.frame_at(u)

    def audio(self, t: float, n: int) -> np.ndarray:
        rec, u = self._source(t)
        return rec.audio_at(u, n)


class TtsOverLiveFace:
    """The live person turns and reflects the light but does not speak; eSpeak reads."""

    def __init__(self, person: LivePerson, seed: int = 0) -> None:
        self.person = person
        self.voice = Performer(ROBOT, 0.0, robot_voice, random.Random(seed))
        self._noise = np.random.default_rng([seed, 13])

    def on_prompt(self, prompt: Prompt, shown_at: float) -> None:
        if prompt.kind != "digits":
            self.person.on_prompt(prompt, shown_at)
        else:
            self.voice.on_prompt(prompt, shown_at)

    def frame(self, t: float) -> np.ndarray:
        return self.person.frame(t)

    def audio(self, t: float, n: int) -> np.ndarray:
        return self.voice.audio(t, n, self._noise)


def make_attack(
    kind: str, victim: int, seed: int, landmarks_of: Callable[[np.ndarray], np.ndarray]
) -> tuple[Actor, np.ndarray]:
    """An attacker of class ``kind`` against bona fide persona ``victim``.

    Args:
        kind: one of :data:`ATTACKS`.
        victim: the persona whose face is attacked (``actors.persona(victim)``).
        seed: varies the attacker's timing, noise and recordings.
        landmarks_of: the attacker's landmark detector (68 points of an RGB image).

    Returns:
        (actor, the victim's enrolment photo): the ceremony compares the live face with
        the photo, as it would for the victim's real enrolment.
    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; known: {', '.join(ATTACKS)}")
    who = persona(victim)
    person = LivePerson(who)
    photo = person.photo()
    if kind in ("still_photo", "photo_mouth", "warp_2d", "warp_25d", "tinted_warp"):
        public = cv2.resize(photo, (who.scene.size, who.scene.size), interpolation=cv2.INTER_AREA)
        mode = {"still_photo": "still", "photo_mouth": "mouth", "warp_2d": "2d"}.get(kind, "25d")
        actor: Actor = PhotoPuppet(
            public, landmarks_of(public), mode, tint=kind == "tinted_warp", seed=seed
        )
        return actor, photo
    if kind == "tts_voice":
        return TtsOverLiveFace(person, seed), photo
    earlier = [
        record(LivePerson(who), plan_ceremony(rng=random.Random(seed * 31 + k))) for k in range(2)
    ]
    if kind == "splice":
        return Splice(earlier, seed), photo
    return Replay(earlier[0], on_screen=kind == "screen_replay", seed=seed), photo


__all__ = [
    "ATTACKS",
    "PhotoPuppet",
    "Replay",
    "Splice",
    "TtsOverLiveFace",
    "film_screen",
    "generic_depth",
    "make_attack",
    "piecewise_affine",
]
