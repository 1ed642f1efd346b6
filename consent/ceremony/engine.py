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

import numpy as np

from avatar.face import FaceAnalyzer
from consent.ceremony.light import LightResult
from consent.ceremony.observe import FaceTracker, FrameObs, keyframe
from consent.ceremony.plan import CeremonyPlan, Prompt
from consent.ceremony.points import Answer, CeremonyOptions, Evidence, depths_of, judge, light_of
from consent.liveness.result import LivenessResult, Point
from voice.digits import read_code
from voice.vad import SAMPLE_RATE, SileroVAD, SpeechStarted, TurnDetector, TurnEnded

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
        self._rest: float | None = None  # resting yaw, once 60 frames are in
        self._face_since: float | None = None
        self._sent: list[Answer] = []
        self._next_at: float | None = None  # when the next prompt is due
        self._audio_origin: float | None = None  # server time of stream sample 0
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
        began = time.thread_time()
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
        self._cpu += time.thread_time() - began

    def push_audio(self, t: float, pcm: np.ndarray) -> None:
        """Feed 16 kHz mono float32 audio whose first sample is at server time ``t``.

        Audio is taken as one continuous stream: ``t`` only sets the clock once.
        """
        if self._result is not None:
            return
        began = time.thread_time()
        if self._audio_origin is None:
            self._audio_origin = t
        for event in self._turns.push(np.asarray(pcm, np.float32)):
            self._on_voice(event)
        self._cpu += time.thread_time() - began

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
        sent = Answer(prompt, now)
        if prompt.kind == "turn":
            sent.frontal = self._frontal
        self._sent.append(sent)
        self._next_at = None
        return [prompt]

    def _late(self, s: Answer, now: float) -> bool:
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

    def _awaiting(self, kind: str) -> Answer | None:
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
            s.heard = read_code(s.transcript, s.prompt.digits)
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
        s.track.append((obs.t, toward))
        if s.onset is None and toward >= opts.turn_deg:
            s.onset = _turn_onset(s.track, opts.onset_deg)
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
        """The resting yaw: the median of the first 60 frames (fixed once they are in)."""
        if self._rest is not None:
            return self._rest
        yaws = [f.yaw for f in self._frames[:60] if f.present and not math.isnan(f.yaw)]
        rest = float(np.clip(np.median(yaws), -10.0, 10.0)) if yaws else 0.0
        if len(self._frames) >= 60:
            self._rest = rest
        return rest

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

    def _evidence(self) -> Evidence:
        return Evidence(
            self.plan, self.options, self._sent, self._frames, self._embeds, self._reference,
            self._started,
        )  # fmt: skip

    def light_result(self) -> LightResult | None:
        """The screen-light measurement (None before the flashes were shown)."""
        return light_of(self._evidence())

    def turn_depths(self) -> list[float]:
        """The 3-D measure of every turn that has a frontal and a peak frame."""
        return depths_of(self._evidence())

    def _judge(self, now: float) -> None:
        began = time.perf_counter()
        points = judge(self._evidence())
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


def _turn_onset(track: list[tuple[float, float]], onset_deg: float) -> float:
    """When the movement that reached the turn began: the first frame after the last one
    still within ``onset_deg`` of rest (a noisy frame before the movement does not count;
    a head already turned when the prompt came has its onset at the prompt)."""
    for i in range(len(track) - 1, -1, -1):
        if track[i][1] < onset_deg:
            return track[min(i + 1, len(track) - 1)][0]
    return track[0][0]


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


__all__ = ["POINTS", "Answer", "Ceremony", "CeremonyOptions"]
