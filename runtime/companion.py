"""The process-wide state of ``likeness serve``: shared models, admission, live sessions.

:class:`Companion` loads the shared models once, answers each WebRTC offer (one
:class:`~runtime.admission.Admission` decides who is served, the same one every
session re-asks while it runs), builds the session and its peer connection, and ends
sessions. The HTTP and WebSocket routes around it are in :mod:`runtime.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import asdict, replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from avatar.types import PreparedAvatar
from consent.epoch_feed import EpochFeed, FeedOptions
from consent.errors import StoreError
from consent.gate import watch_grant
from consent.retention import SweepReport, sweep_forever
from runtime import components
from runtime.admission import AdmissionCheck, ConsentUse
from runtime.avatar_components import (
    SYNTHETIC_REF,
    avatar_generator,
    load_avatar_engine,
    resolve_avatar,
    store,
)
from runtime.config import KioskProfile, Settings
from runtime.logs import get_logger
from runtime.memory import freeze_heap, release_every
from runtime.metrics import Metrics
from runtime.rtp_receiver import low_delay_audio
from runtime.session import Session, SharedModels
from runtime.turn import IceProvider
from runtime.warmup import warm_up
from voice.errors import VoiceError

if TYPE_CHECKING:
    from consent.gate import ConsentGate

log = get_logger("likeness.server")


def _log_sweep(report: SweepReport) -> None:
    if report.changed:
        log.info(
            "retention sweep deleted expired consent data",
            subjects=len(report.purged_subjects),
            avatars=len(report.avatars),
        )


class OfferError(Exception):
    """An offer that cannot be served; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class Companion:
    """The process-wide state: shared models and the live sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.models: SharedModels | None = None
        self.gate: ConsentGate | None = None  # once loaded
        self.sessions: dict[str, tuple[Session, RTCPeerConnection]] = {}
        self._avatars: dict[str, PreparedAvatar] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._voices: dict[bool, Any] = {}  # TTS voices by eldercare (slow speech) setting
        self._clone_gate: Any = None  # the voice consent hook handed to load_tts
        self._voice_withdrawn = False  # the cloned voice was refused: stock voice from now on
        self._daemons: list[asyncio.Task] = []  # retention sweep, voice consent, memory

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load(self) -> None:
        """Load the shared models (call once at start-up) and start the consent tasks.

        A cloned TTS voice (coqui) loads only with a voice grant of ``server.avatar`` for
        ``consent.deployment``; the retention sweep runs now and every
        ``consent.sweep_interval_s``; on PostgreSQL the revocation epoch feed starts
        (sessions wait on it; a blind feed ends real-face sessions). :meth:`shutdown`
        stops them.
        """
        s = self.settings
        self.gate = await asyncio.to_thread(components.consent_gate, s, (self._forget_avatars,))
        options = FeedOptions(blind_after_s=s.consent.blind_after_s)
        feed = EpochFeed.for_store(self.gate.store, options)  # None on SQLite: sessions poll
        if feed is not None:
            await feed.start()
            self.gate.feed = feed
        self._clone_gate = components.voice_clone_gate(s, self.gate)
        # The neural face model (avatar.backend = "neural") first: a bad checkpoint fails fast.
        engine = await asyncio.to_thread(load_avatar_engine, s)
        asr = await asyncio.to_thread(components.load_asr, s)
        tts = await components.load_tts(s, clone_gate=self._clone_gate)
        dialogue = await components.load_dialogue(s)
        detector = components.distress_detector(s)
        models = SharedModels(asr, tts, dialogue, detector, avatar_engine=engine)
        self._daemons = [
            asyncio.create_task(
                sweep_forever(
                    self.gate.store,
                    retention=timedelta(days=s.consent.retention_days),
                    every_s=s.consent.sweep_interval_s,
                    on_report=_log_sweep,
                    on_error=lambda err: log.error("retention sweep failed", error=str(err)),
                ),
                name="retention-sweep",
            )
        ]
        if components.clones_voice(s):
            self._daemons.append(asyncio.create_task(self._watch_voice(), name="voice-consent"))
        if s.server.release_memory_s > 0:  # runtime/memory.py: RSS that levels off
            every = release_every(s.server.release_memory_s)
            self._daemons.append(asyncio.create_task(every, name="release-memory"))
        # Kiosk profiles may ask for the other voice (slow speech): load it now, not
        # while a kiosk waits for its answer.
        profiles = [self._with_profile(s, p) for p in (s.kiosk, *s.kiosk.profiles.values())]
        for settings in profiles:
            await self._load_voice(settings)
        self.avatar(s.server.avatar)  # fail at start-up, not at the first call
        # The face model warms on the synthetic face: the same weights, and no real
        # person is animated outside a session that passed its consent check.
        face = self.avatar(SYNTHETIC_REF)
        # Every stage once, for real, before /health says ready (it checks self.models).
        report = await warm_up(
            asr=asr,
            voices=[tts, *self._voices.values()],
            dialogue=dialogue,
            personas=[components.persona(x) for x in (s, *profiles)],
            make_detector=partial(components.load_turn_detector, s),
            make_generator=partial(avatar_generator, s, face, engine),
        )
        log.info("warmed up", seconds=report.seconds, heard=report.heard)
        # Out of the cyclic collector's walk: a full collection over torch and the models
        # held the event loop ~110 ms, unannounced (runtime/memory.py).
        log.info("heap frozen", objects=freeze_heap())
        self.models = models
        log.info("ready", host=s.server.host, port=s.server.port)

    async def shutdown(self) -> None:
        for task in self._daemons:
            task.cancel()
        await asyncio.gather(*self._daemons, return_exceptions=True)
        for session_id in list(self.sessions):
            await self.end(session_id, "server shutting down")
        if self.models is not None:
            await self.models.dialogue.aclose()
            if self.models.avatar_engine is not None:
                await self.models.avatar_engine.aclose()
        if self.gate is not None:
            if self.gate.feed is not None:
                await self.gate.feed.stop()
            self.gate.store.close()

    def _forget_avatars(self, _subject_id: str, avatar_ids: tuple[str, ...]) -> None:
        """Store purger: drop purged faces from the in-memory cache (any thread)."""
        for avatar_id in avatar_ids:
            self._avatars.pop(avatar_id, None)

    async def _watch_voice(self) -> None:
        """The cloned voice's consent: once refused, no session speaks in it again.

        Policy (the safer of the two): every live session ends at once, as when a face's
        grant is revoked, because all of them speak in the shared cloned voice; sessions
        started later speak in the stock Piper voice. The coqui backend also asks the
        gate before every sentence, so a reply in progress stops at the next sentence.
        """
        s = self.settings
        refusal = await watch_grant(
            self.gate,
            avatar_id=components.clone_voice_id(s) or "",
            deployment=s.consent.deployment,
            purpose=s.consent.purpose,
            want_voice=True,
            every_s=s.consent.recheck_ms / 1000,
            blind_after_s=s.consent.blind_after_s,
            actor="tts",
        )
        log.warning("voice permission withdrawn", reason=refusal.reason)
        for session, _pc in list(self.sessions.values()):
            await session.withdraw(f"voice: {refusal.reason}")
        stock = {}
        try:
            for eldercare in (False, True):
                persona = s.persona.model_copy(update={"eldercare": eldercare})
                stock[eldercare] = await components.load_tts(
                    s.model_copy(update={"persona": persona}), "piper"
                )
        except VoiceError as err:  # the cloned voice still refuses every sentence
            log.error("no stock voice to fall back to", error=str(err))
            return
        self._voices = stock
        self._voice_withdrawn = True
        if self.models is not None:
            self.models = replace(self.models, tts=stock[s.persona.eldercare])

    def avatar(self, ref: str) -> PreparedAvatar:
        """A face clients may ask for: the synthetic one, or an allow-listed prepared id."""
        allowed = {SYNTHETIC_REF, self.settings.server.avatar, *self.settings.server.avatars}
        if ref not in allowed or (ref != SYNTHETIC_REF and ref not in store(self.settings)):
            raise OfferError(404, f"unknown avatar {ref[:60]!r}")
        if ref not in self._avatars:
            self._avatars[ref] = resolve_avatar(self.settings, ref)
        return self._avatars[ref]

    def profile(self, name: Any) -> KioskProfile | None:
        """The kiosk profile called ``name`` (None: no profile asked for).

        Raises:
            OfferError: 404 for an unknown profile.
        """
        if not name:
            return None
        kiosk = self.settings.kiosk
        if name == "default":
            return kiosk
        if name not in kiosk.profiles:
            raise OfferError(404, f"unknown kiosk profile {str(name)[:60]!r}")
        return kiosk.profiles[name]

    @staticmethod
    def _with_profile(settings: Settings, profile: KioskProfile) -> Settings:
        """``settings`` with the persona a kiosk profile asks for."""
        persona = settings.persona.model_copy(
            update={"eldercare": profile.slow_speech}
            | ({"name": profile.persona_name} if profile.persona_name else {})
        )
        return settings.model_copy(update={"persona": persona})

    async def _load_voice(self, settings: Settings) -> None:
        """Load the other voice (slow or normal speech) if the persona asks for it."""
        eldercare = settings.persona.eldercare
        if eldercare != self.settings.persona.eldercare and eldercare not in self._voices:
            self._voices[eldercare] = await components.load_tts(
                settings, clone_gate=self._clone_gate
            )

    async def _models_for(self, settings: Settings) -> SharedModels:
        """The shared models, with a slow or normal voice as the persona asks."""
        assert self.models is not None
        eldercare = settings.persona.eldercare
        if eldercare == self.settings.persona.eldercare:
            return self.models
        await self._load_voice(settings)
        return replace(self.models, tts=self._voices[eldercare])

    def admission(
        self, settings: Settings, face: PreparedAvatar, deployment: str
    ) -> AdmissionCheck:
        """The admission of a session of ``face`` in ``deployment``: its grant (a real
        person's face), the deployment's list of faces, and the cloned voice's grant
        (while the server speaks in it). Call it (blocking) for the decision."""
        purpose = settings.consent.purpose
        use = None if face.synthetic else ConsentUse(self.gate, face.id, deployment, purpose)
        cloning = components.clones_voice(settings) and self._clone_gate is not None
        return AdmissionCheck(
            self.gate,
            deployment,
            purpose,
            face=use,
            voice_id=(components.clone_voice_id(settings) or "") if cloning else None,
            voice_in_use=lambda: not self._voice_withdrawn,
        )

    def _refuse_when_full(self) -> None:
        if len(self.sessions) >= self.settings.server.max_sessions:
            self.metrics.refused.labels(reason="busy").inc()
            raise OfferError(503, "busy: all sessions are taken", {"Retry-After": "10"})

    async def offer(self, body: dict[str, Any]) -> dict[str, str]:
        """Answer a WebRTC offer and start a session."""
        if self.models is None:
            raise OfferError(503, "not ready yet", {"Retry-After": "2"})
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0"):
            self.metrics.refused.labels(reason="bad_sdp").inc()
            raise OfferError(400, "expected {'type': 'offer', 'sdp': 'v=0...'}")
        profile = self.profile(body.get("profile"))
        settings = self.settings
        if profile is not None:
            settings = self._with_profile(settings, profile)
        default_face = profile.avatar if profile is not None else settings.server.avatar
        face = self.avatar(str(body.get("avatar") or default_face))
        deployment = str(body.get("deployment") or settings.consent.deployment)[:80]
        admission = self.admission(settings, face, deployment)
        try:
            decided = await asyncio.to_thread(admission)
        except StoreError as err:
            if not err.retryable:
                raise
            # No session was made: a 503 lets the balancer try a node that can read it.
            log.error("consent database unavailable: offer refused", error=str(err))
            self.metrics.refused.labels(reason="consent").inc()
            raise OfferError(
                503, "the consent database cannot be reached now", {"Retry-After": "2"}
            ) from None
        if not decided.allowed:
            self.metrics.refused.labels(reason="consent").inc()
            raise OfferError(decided.status, decided.reason)
        models = await self._models_for(settings)
        self._refuse_when_full()  # before building a generator nobody would use
        generator = await asyncio.to_thread(  # outside the lock: other offers go on
            avatar_generator, settings, face, models.avatar_engine
        )
        async with self._lock:
            try:
                self._refuse_when_full()
            except OfferError:
                await generator.aclose()
                raise
            pc = RTCPeerConnection(self._rtc_config())
            channel_box: dict[str, Any] = {}

            def send(message: dict[str, Any]) -> None:
                channel = channel_box.get("events")
                if channel is not None and channel.readyState == "open":
                    channel.send(event_json(message))

            session = Session(
                settings,
                models,
                face,
                generator,
                send,
                on_latency=self.metrics.observe,
                on_close=lambda sid: self._background(self.end(sid, "session ended")),
                consent=None if face.synthetic else admission,
            )
            self.sessions[session.id] = (session, pc)
        try:
            answer = await self._negotiate(pc, session, sdp, channel_box)
        except Exception as err:
            await self.end(session.id, "negotiation failed")
            self.metrics.refused.labels(reason="bad_sdp").inc()
            raise OfferError(400, f"cannot use this offer: {err}") from None
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.started.inc()
        log.info(
            "session started",
            session=session.id,
            avatar=face.id,
            deployment=str(body.get("deployment"))[:60],
        )
        return {"sdp": answer.sdp, "type": answer.type, "session_id": session.id}

    def _rtc_config(self) -> RTCConfiguration:
        """The server peer's ICE servers (``server.ice_servers``; TURN credentials minted
        now, so a rotated ``turn_secret_file`` is read by the next session)."""
        return IceProvider.from_config(self.settings.server).rtc_configuration()

    async def _negotiate(
        self, pc: RTCPeerConnection, session: Session, sdp: str, channel_box: dict[str, Any]
    ) -> RTCSessionDescription:
        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == "events":
                channel_box["events"] = channel
                hello = event_json({"type": "state", "state": session.state})
                if channel.readyState == "open":  # aiortc announces it already open
                    channel.send(hello)
                else:
                    channel.on("open", lambda: channel.send(hello))

                @channel.on("message")
                def on_message(message: Any) -> None:
                    session.liveness.client_alive()  # any message: a heartbeat, hello, end
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        if json.loads(message).get("type") == "end":
                            self._background(self.end(session.id, "client ended"))

        listening: list[Any] = []

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and not listening:
                listening.append(track)
                # aiortc's own buffer throws good frames away under loss: runtime/rtp_receiver
                low_delay_audio(next(r for r in pc.getReceivers() if r.track is track))
                session.start(track)
            else:  # a camera (or a second microphone) nobody reads: drain it
                session.drain(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(session.id, f"connection {pc.connectionState}")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        audio_sent = video_sent = False
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio" and not audio_sent:
                transceiver.sender.replaceTrack(session.audio_out)
                transceiver.direction = "sendrecv"
                audio_sent = True
            elif transceiver.kind == "video" and not video_sent:
                transceiver.sender.replaceTrack(session.video_out)
                transceiver.direction = (
                    "sendrecv" if transceiver.direction == "sendrecv" else "sendonly"
                )
                video_sent = True
        if not audio_sent:
            raise ValueError("the offer has no audio (microphone) track")
        if not video_sent:
            pc.addTrack(session.video_out)
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate
        return pc.localDescription

    async def add_candidate(self, session_id: str, message: dict[str, Any]) -> None:
        """Trickle ICE: add one remote candidate (``{"candidate", "sdpMid",
        "sdpMLineIndex"}``; an empty candidate means the client has sent them all).

        Raises:
            OfferError: unknown session or a malformed candidate (400).
        """
        entry = self.sessions.get(session_id)
        if entry is None:
            raise OfferError(404, f"no session {session_id}")
        text = message.get("candidate")
        if not isinstance(text, str):
            raise OfferError(400, "a candidate message needs a 'candidate' string")
        if not text:
            await entry[1].addIceCandidate(None)  # the client has sent them all
            return
        body = text.removeprefix("candidate:")
        if len(body.split()) < 8:  # aiortc only asserts this
            raise OfferError(400, "malformed ICE candidate: too few fields")
        try:
            candidate = candidate_from_sdp(body)
        except (ValueError, IndexError) as err:
            raise OfferError(400, f"malformed ICE candidate: {err}") from None
        candidate.sdpMid = message.get("sdpMid")
        candidate.sdpMLineIndex = message.get("sdpMLineIndex")
        await entry[1].addIceCandidate(candidate)

    async def end(self, session_id: str, reason: str) -> None:
        """Close a session and its peer connection; nothing stays behind."""
        entry = self.sessions.pop(session_id, None)
        if entry is None:
            return
        session, pc = entry
        await session.close(reason)
        await pc.close()
        self.metrics.sessions.set(len(self.sessions))
        log.info("microphone stats", session=session_id, **asdict(session.liveness.inbound))


def event_json(message: dict[str, Any]) -> str:
    """Serialise an event for the data channel."""
    return json.dumps(message, separators=(",", ":"))
