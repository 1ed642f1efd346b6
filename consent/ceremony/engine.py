"""The live ceremony: reveal prompts one at a time, judge frames and audio as they come.

:class:`Ceremony` is transport-free: the caller feeds it frames and audio with
server-clock times and asks it, as often as it likes (every frame is fine), which
prompts are due. The WebRTC route (:mod:`consent.ceremony.live`) and the benchmark's
virtual clock (:mod:`consent.ceremony.simulate`) drive the same object. Life::

    ceremony = Ceremony(plan, reference, analyzer, transcribe, vad)
    while not ceremony.finished:
        for prompt in ceremony.poll(now):        # send each over the data channel
            channel.send(json.dumps(prompt.to_json()))
        ceremony.shown(prompt_id, ack_at, since_shown_s)   # when the page acks one
        ceremony.push_frame(t, rgb); ceremony.push_audio(t, pcm16k)
    result = ceremony.result                      # LivenessResult, every point in words

The order: once the face has been seen for ``settle_s``, the flash sequence; then each
digit group after the previous one was spoken; then each head turn after the head came
back from the previous one. Before every prompt the ceremony waits a random
``gap_s`` it picks itself, so the moments are as unpredictable as the content. A prompt
left unanswered for ``answer_timeout_s`` ends the ceremony at once.

Points (:data:`POINTS`), each with its reason in plain words:

- ``digits``: each group heard exactly (Whisper, biased to digits).
- ``reaction``: each answer began ``reaction_min_s``..``reaction_max_s`` after its prompt
  was shown. The page says how long ago it showed it; the server bounds that by its own
  send time and the ack's arrival, so a page cannot claim an earlier showing.
- ``head_turns``: each turn went past ``turn_deg`` in the asked direction.
- ``screen_light``: :mod:`consent.ceremony.light`.
- ``depth``: :mod:`consent.ceremony.depth`, on each turn's peak.
- ``lip_sync``: the mouth opened and closed with the voice of each group.
- ``identity``: the live face matches the photo, stays the same person, and is alone.
- ``continuity``: no cut: the face never jumps between consecutive frames.
- ``nonce``: given by the caller (the ceremony's challenge was fresh and unused).

Blocking CPU work (face analysis per frame, Whisper per digit group): run the object
in one worker thread. It keeps pixels only for a few keyframes, and only while it runs.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from avatar.face import FaceAnalyzer, embedding_distance
from consent.ceremony.depth import DepthOptions, TurnDepth, explain_turn
from consent.ceremony.light import LightOptions, LightResult, check_light
from consent.ceremony.observe import FaceTracker, FrameObs, keyframe
from consent.ceremony.plan import CeremonyPlan, Prompt
from consent.liveness.verify import LivenessResult, Point
from voice.digits import parse_digits
from voice.vad import SAMPLE_RATE, SileroVAD, SpeechStarted, TurnDetector, TurnEnded, VADOptions

POINTS = (
    "digits",
    "reaction",
    "head_turns",
    "screen_light",
    "depth",
    "lip_sync",
    "identity",
    "continuity",
    "nonce",
)


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
        identity_threshold: largest embedding distance of the live face to the photo.
        stability_threshold: largest distance between two embedded frames.
        embed_every_s: a frontal frame is embedded at most this often ...
        max_embeds: ... and at most this many times.
        lip_sync_threshold: lowest correlation of mouth opening with voice loudness.
        min_mouth_motion: lowest standard deviation of the mouth opening while speaking.
        max_lip_lag_s: audio/video offsets searched for the best lip-sync correlation.
        min_face_fraction: share of frames with a face, at least.
        second_face_fraction: another face in this share of frames fails identity.
        max_jump: largest move of the face's centre between two consecutive frames,
            in face widths per 1/15 s.
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
    lip_sync_threshold: float = 0.3
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
class _Sent:
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
    frontal: tuple[np.ndarray, np.ndarray] | None = None  # turn: grey, landmarks
    peak: tuple[np.ndarray, np.ndarray] | None = None
    settled: int = 0


class Ceremony:
    """One person's live ceremony (see the module doc).

    Args:
        plan: what to ask (:func:`consent.ceremony.plan.plan_ceremony`).
        reference: the 128-d embedding of the photo to be animated.
        analyzer: a loaded face analyzer (shared: the caller serialises its use).
        transcribe: 16 kHz mono float32 audio -> text (Whisper set up for digits,
            ``consent.liveness.verify.load_asr().transcribe_sync``-like; blocking).
        vad: a loaded Silero VAD, owned by this ceremony from now on.
        options: thresholds; None uses the defaults.
        rng: where the waits come from (None: ``secrets``; seeded in tests).
        nonce: the nonce point (the caller consumed the challenge); None: unchecked.
        started_at: server seconds when the ceremony began (None: the first frame).
    """

    def __init__(
        self,
        plan: CeremonyPlan,
        reference: np.ndarray,
        analyzer: FaceAnalyzer,
        transcribe: Callable[[np.ndarray], str],
        vad: SileroVAD,
        options: CeremonyOptions | None = None,
        rng: random.Random | None = None,
        nonce: Point | None = None,
        started_at: float | None = None,
    ) -> None:
        self.plan = plan
        self.options = opts = options or CeremonyOptions()
        self._reference = reference
        self._analyzer = analyzer
        self._transcribe = transcribe
        self._turns = TurnDetector(vad, opts.vad)
        self._tracker = FaceTracker(analyzer)
        self._rng = rng or secrets.SystemRandom()
        self._nonce = nonce
        self._started = started_at
        self._frames: list[FrameObs] = []
        self._embeds: list[tuple[float, np.ndarray]] = []
        self._last_embed = -math.inf
        self._frontal: tuple[np.ndarray, np.ndarray] | None = None
        self._face_since: float | None = None
        self._sent: list[_Sent] = []
        self._next_at: float | None = None  # when the next prompt is due
        self._audio_origin: float | None = None  # server time of stream sample 0
        self._audio_samples = 0
        self._stopped: str | None = None  # why the ceremony ended early
        self._result: LivenessResult | None = None
        self._cpu = 0.0
        self._judge_s = 0.0

    # ---- state ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the result is known (every prompt answered, or one failed)."""
        return self._result is not None

    @property
    def result(self) -> LivenessResult | None:
        return self._result

    @property
    def sent(self) -> list[Prompt]:
        """The prompts revealed so far, in order."""
        return [s.prompt for s in self._sent]

    def timeline(self) -> list[dict]:
        """When each revealed prompt was sent, shown, answered and done (server seconds;
        None where it has not happened)."""
        return [
            {
                "id": s.prompt.id,
                "kind": s.prompt.kind,
                "sent_at": s.sent_at,
                "shown_at": s.shown_at,
                "onset": s.onset,
                "done_at": s.done_at,
            }
            for s in self._sent
        ]

    def stop(self, reason: str, now: float) -> LivenessResult:
        """End the ceremony early (the peer left, a deadline passed) and judge it."""
        if self._result is None:
            self._stopped = reason
            self._judge(now)
        assert self._result is not None
        return self._result

    # ---- input ------------------------------------------------------------------------

    def shown(self, prompt_id: int, ack_at: float, since_shown_s: float) -> None:
        """The page acknowledged showing prompt ``prompt_id``.

        Args:
            prompt_id: the prompt's id.
            ack_at: server seconds when the acknowledgement arrived.
            since_shown_s: the page's own word for how long before sending the ack it
                showed the prompt; bounded to [sent, ack] here.
        """
        for s in self._sent:
            if s.prompt.id == prompt_id and s.ack_at is None:
                s.ack_at = ack_at
                claim = ack_at - max(
                    0.0, float(since_shown_s) if math.isfinite(since_shown_s) else 0.0
                )
                s.shown_at = min(max(claim, s.sent_at), ack_at)

    def push_frame(self, t: float, frame: np.ndarray) -> None:
        """Analyse one RGB uint8 frame captured at server time ``t`` (blocking)."""
        if self._result is not None:
            return
        began = time.perf_counter()
        if self._started is None:
            self._started = t
        obs = self._tracker.push(t, frame)
        self._frames.append(obs)
        if obs.present:
            self._face_since = t if self._face_since is None else self._face_since
        else:
            self._face_since = None
        self._watch_turn(obs, frame)
        self._maybe_embed(obs, frame)
        self._cpu += time.perf_counter() - began

    def push_audio(self, t: float, pcm: np.ndarray) -> None:
        """Feed 16 kHz mono float32 audio whose first sample is at server time ``t``.

        Audio is taken as one continuous stream: ``t`` only sets the clock once.
        """
        if self._result is not None:
            return
        began = time.perf_counter()
        if self._audio_origin is None:
            self._audio_origin = t
        self._audio_samples += len(pcm)
        for event in self._turns.push(np.asarray(pcm, np.float32)):
            self._on_voice(event)
        self._cpu += time.perf_counter() - began

    # ---- prompts ------------------------------------------------------------------------

    def poll(self, now: float) -> list[Prompt]:
        """The prompts to send now (each once); judges when the last answer is in."""
        if self._result is not None:
            return []
        opts = self.options
        if self._started is None:
            self._started = now
        current = self._sent[-1] if self._sent else None
        if current is not None and current.done_at is None:
            if self._late(current, now):
                return []
            shown = current.shown_at
            flash = current.prompt if current.prompt.kind == "flash" else None
            if flash and shown is not None and now >= shown + flash.flash_s + opts.light.tail_s:
                current.done_at = now
        if current is None:
            if self._face_since is None or now - self._face_since < opts.settle_s:
                if now - self._started > opts.face_timeout_s:
                    self.stop(
                        "We could not see your face: sit in front of the camera, in good light.",
                        now,
                    )
                return []
        elif current.done_at is None:
            return []
        if len(self._sent) == len(self.plan.prompts):
            self._judge(now)
            return []
        if self._next_at is None:
            self._next_at = now + self._rng.uniform(*opts.gap_s)
        if now < self._next_at:
            return []
        prompt = self.plan.prompts[len(self._sent)]
        sent = _Sent(prompt, now)
        if prompt.kind == "turn":
            sent.frontal = self._frontal
        self._sent.append(sent)
        self._next_at = None
        return [prompt]

    def _late(self, s: _Sent, now: float) -> bool:
        opts = self.options
        if s.ack_at is None and now - s.sent_at > opts.ack_timeout_s:
            self.stop(
                "The page did not show the prompt in time: check your connection and start again.",
                now,
            )
            return True
        if now - s.sent_at > opts.answer_timeout_s + s.prompt.flash_s:
            what = {
                "digits": f"read the digits {' '.join(s.prompt.digits)}",
                "turn": f"turn your head to your {s.prompt.direction} and back",
                "flash": "look at the flashing screen",
            }[s.prompt.kind]
            self.stop(f"You were asked to {what}, but we did not see or hear it in time.", now)
            return True
        return False

    # ---- answers ------------------------------------------------------------------------

    def _awaiting(self, kind: str) -> _Sent | None:
        s = self._sent[-1] if self._sent else None
        return s if s is not None and s.prompt.kind == kind and s.done_at is None else None

    def _on_voice(self, event: object) -> None:
        assert self._audio_origin is not None
        s = self._awaiting("digits")
        if isinstance(event, SpeechStarted):
            if s is not None and s.onset is None:
                s.onset = self._audio_origin + event.at
        elif isinstance(event, TurnEnded) and s is not None and s.onset is not None:
            start = self._audio_origin + event.start
            end = self._audio_origin + event.end
            s.speech = (start, end)
            pcm = event.audio.pcm
            s.transcript = self._transcribe(pcm)
            s.heard = parse_digits(s.transcript)
            s.envelope = _envelope(pcm, self._audio_origin + event.audio.pts)
            s.done_at = end

    def _watch_turn(self, obs: FrameObs, frame: np.ndarray) -> None:
        opts = self.options
        rest = self._rest_yaw()
        s = self._awaiting("turn")
        if s is None:
            if obs.detected and not math.isnan(obs.yaw) and abs(obs.yaw - rest) < 6.0:
                assert obs.landmarks is not None
                self._frontal = (keyframe(frame), obs.landmarks)
            return
        if math.isnan(obs.yaw) or obs.landmarks is None:
            return
        sign = -1.0 if s.prompt.direction == "left" else 1.0
        if opts.mirrored:
            sign = -sign
        toward = sign * (obs.yaw - rest)
        if s.onset is None and toward >= opts.onset_deg:
            s.onset = obs.t
        if toward > s.peak_yaw:
            s.peak_yaw = toward
            s.peak = (keyframe(frame), obs.landmarks)
        if s.peak_yaw >= opts.turn_deg and abs(obs.yaw - rest) < opts.return_deg:
            s.settled += 1
            if s.settled >= opts.return_frames:
                s.done_at = obs.t
        else:
            s.settled = 0

    def _rest_yaw(self) -> float:
        yaws = [f.yaw for f in self._frames[:60] if f.present and not math.isnan(f.yaw)]
        return float(np.clip(np.median(yaws), -10.0, 10.0)) if yaws else 0.0

    def _maybe_embed(self, obs: FrameObs, frame: np.ndarray) -> None:
        opts = self.options
        if (
            not obs.detected
            or obs.landmarks is None
            or math.isnan(obs.yaw)
            or abs(obs.yaw) > 12.0
            or len(self._embeds) >= opts.max_embeds
            or obs.t - self._last_embed < opts.embed_every_s
        ):
            return
        self._last_embed = obs.t
        self._embeds.append((obs.t, self._analyzer.embed(frame, obs.landmarks)))

    # ---- judging --------------------------------------------------------------------------

    def _judge(self, now: float) -> None:
        began = time.perf_counter()
        points = {
            "digits": self._digits_point(),
            "reaction": self._reaction_point(),
            "head_turns": self._turns_point(),
            "screen_light": self._light_point(),
            "depth": self._depth_point(),
            "lip_sync": self._lip_point(),
            "identity": self._identity_point(),
            "continuity": self._continuity_point(),
        }
        points["nonce"] = self._nonce or Point(
            "nonce", True, 1.0, "The ceremony's challenge was new."
        )
        ordered = tuple(points[name] for name in POINTS)
        self._judge_s = time.perf_counter() - began
        timings = {
            "cpu": self._cpu + self._judge_s,
            "judge": self._judge_s,
            "duration": now - (now if self._started is None else self._started),
            "frames": float(len(self._frames)),
        }
        passed = self._stopped is None and all(p.passed for p in ordered)
        if self._stopped is not None:
            ordered = (Point("ceremony", False, 0.0, self._stopped), *ordered)
        self._result = LivenessResult(passed, ordered, timings)

    def _of(self, kind: str) -> list[_Sent]:
        return [s for s in self._sent if s.prompt.kind == kind]

    def _missing(self, kind: str) -> int:
        return sum(1 for p in self.plan.prompts if p.kind == kind) - sum(
            1 for s in self._of(kind) if s.done_at is not None
        )

    def _digits_point(self) -> Point:
        groups = self._of("digits")
        wrong = []
        right = 0
        for s in groups:
            if s.heard == s.prompt.digits:
                right += 1
            elif s.done_at is not None:
                said = " ".join(s.heard) if s.heard else f"no digits ({s.transcript.strip()!r})"
                wrong.append(f"we heard {said} for {' '.join(s.prompt.digits)}")
        total = sum(1 for p in self.plan.prompts if p.kind == "digits")
        score = right / total
        if wrong:
            return Point(
                "digits",
                False,
                score,
                _sentence("; ".join(wrong) + ": read each group aloud, clearly"),
            )
        if right < total:
            return Point("digits", False, score, f"Only {right} of {total} digit groups were read.")
        return Point(
            "digits", True, score, f"We heard every group of the code ({self.plan.digits})."
        )

    def _reaction_point(self) -> Point:
        opts = self.options
        problems = []
        times = []
        for s in self._sent:
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
            return Point("reaction", False, score, _sentence("; ".join(problems)))
        return Point(
            "reaction",
            True,
            score,
            f"Every answer began in a human time ({min(times):.2f}-{max(times):.2f} s).",
        )

    def _turns_point(self) -> Point:
        opts = self.options
        turns = self._of("turn")
        total = len(self.plan.turns)
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
        share = self._face_share()
        if share < opts.min_face_fraction:
            problems.append(
                f"we saw your face in only {share:.0%} of the frames (at least "
                f"{opts.min_face_fraction:.0%}): keep your face in view"
            )
        score = made / total
        if problems or made < total:
            if not problems:
                problems.append(f"only {made} of {total} turns were made")
            return Point("head_turns", False, score, _sentence("; ".join(problems)))
        peaks = ", ".join(f"{s.prompt.direction} {s.peak_yaw:.0f} degrees" for s in turns)
        return Point("head_turns", True, score, f"The head turned as asked ({peaks}).")

    def _face_share(self) -> float:
        if not self._frames:
            return 0.0
        return sum(f.present for f in self._frames) / len(self._frames)

    def light_result(self) -> LightResult | None:
        """The screen-light measurement (None before the flashes were shown)."""
        flashes = self._of("flash")
        if not flashes or flashes[0].shown_at is None:
            return None
        return check_light(self._frames, flashes[0].prompt, flashes[0].shown_at, self.options.light)

    def _light_point(self) -> Point:
        found = self.light_result()
        if found is None:
            return Point(
                "screen_light", False, 0.0, "The screen did not flash (the page did not show it)."
            )
        return Point("screen_light", found.passed, found.correlation, found.reason)

    def turn_depths(self) -> list[TurnDepth]:
        """The 3-D measure of every turn that has a frontal and a peak frame."""
        out = []
        for s in self._of("turn"):
            if s.frontal is None or s.peak is None or s.peak_yaw < self.options.turn_deg:
                continue
            (a, la), (b, lb) = s.frontal, s.peak
            if a.shape == b.shape:
                out.append(explain_turn(a, la, b, lb, self.options.depth))
        return out

    def _depth_point(self) -> Point:
        limit = self.options.depth.max_explained
        depths = self.turn_depths()
        if not depths:
            return Point("depth", False, 1.0, "We saw no head turn to judge.")
        worst = max(d.explained for d in depths)
        if worst >= limit:
            return Point(
                "depth",
                False,
                worst,
                f"Your head turn looked like a flat picture being bent (explained {worst:.3f}, "
                f"below {limit:.3f} needed): the camera must see you live.",
            )
        return Point("depth", True, worst, f"The head turned in 3-D (explained {worst:.3f}).")

    def _lip_point(self) -> Point:
        opts = self.options
        mouths, envs = [], []
        for s in self._of("digits"):
            if s.speech is None or s.envelope is None:
                continue
            start, end = s.speech
            inside = [f for f in self._frames if start <= f.t <= end and not math.isnan(f.mouth)]
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

    def _identity_point(self) -> Point:
        opts = self.options
        problems = []
        n = max(len(self._frames), 1)
        crowded = sum(1 for f in self._frames if f.extra_faces > 0) / n
        if crowded >= opts.second_face_fraction:
            problems.append(
                f"another face was in view in {crowded:.0%} of the frames: only you may be "
                "in the picture"
            )
        if len(self._embeds) < 2:
            return Point(
                "identity",
                False,
                math.inf,
                "We could not see your face well enough to compare it with the photo.",
            )
        dists = [embedding_distance(e, self._reference) for _, e in self._embeds]
        dist = float(np.median(dists))
        if dist >= opts.identity_threshold:
            problems.append(
                f"the face does not match the photo (distance {dist:.2f}, below "
                f"{opts.identity_threshold:.2f} needed)"
            )
        worst = max(
            (embedding_distance(a, b), ta, tb)
            for i, (ta, a) in enumerate(self._embeds)
            for tb, b in self._embeds[i + 1 :]
        )
        if worst[0] > opts.stability_threshold:
            problems.append(
                f"the face at {worst[2] - (self._started or 0):.1f} s is not the face at "
                f"{worst[1] - (self._started or 0):.1f} s: the same person must stay in view"
            )
        if problems:
            return Point("identity", False, dist, _sentence("; ".join(problems)))
        return Point("identity", True, dist, f"The face matches the photo (distance {dist:.2f}).")

    def _continuity_point(self) -> Point:
        worst = 0.0
        at = 0.0
        prev: FrameObs | None = None
        for f in self._frames:
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
        if worst > self.options.max_jump:
            return Point(
                "continuity",
                False,
                worst,
                f"The picture jumped at {at - (self._started or 0):.1f} s (the face moved "
                f"{worst:.2f} face widths at once): the video must be one unbroken take.",
            )
        return Point("continuity", True, worst, "The video was one unbroken take.")


def _envelope(
    pcm: np.ndarray, start: float, window_s: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    size = int(window_s * SAMPLE_RATE)
    n = len(pcm) // size
    if n == 0:
        return np.array([start]), np.zeros(1)
    rms = np.sqrt((pcm[: n * size].astype(np.float64).reshape(n, size) ** 2).mean(1))
    smooth = np.convolve(rms, np.ones(3) / 3, mode="same")
    return start + (np.arange(n) + 0.5) * window_s, smooth


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


__all__ = ["POINTS", "Ceremony", "CeremonyOptions"]
