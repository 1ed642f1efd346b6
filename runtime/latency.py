"""A live session's latency stamps per turn, and the LLM view that stamps the first token.

Each turn's :class:`~runtime.frames.TurnLatency` is stamped once per stage, as the
stage happens (``time.monotonic()``, or the wall time a track reports for what it
sent). The turn is complete when both its first video frame and its first audio were
sent: :meth:`TurnLatencies.mark` returns it then, for the session's ``metrics`` event.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from runtime.dialogue.base import DialogueBackend, PromptWarming
from runtime.frames import TurnLatency
from runtime.logs import get_logger

log = get_logger("likeness.session")

KEEP_TURNS = 5  # a long session keeps only its recent turns


class TurnLatencies:
    """The recent turns' latency stamps of one session; a complete turn is reported.

    The latest turn is the one a stage without a turn (the LLM's first token, the first
    audio sent) belongs to. Hand :meth:`first_piece` to :class:`TimedBackend` and
    :meth:`audio_started` / :meth:`frame_sent` to the tracks.

    Args:
        session: the session's id (logged).
        send: sends the ``metrics`` event of a complete turn to the client.
        stats: the tracks' counters now, sent along (``{"video": ..., "audio": ...}``).
        on_latency: also called with each complete turn (the server's histogram).
    """

    def __init__(
        self,
        session: str,
        send: Callable[[dict[str, Any]], None],
        stats: Callable[[], dict[str, Any]],
        on_latency: Callable[[TurnLatency], None] | None = None,
    ) -> None:
        self._session, self._send, self._stats = session, send, stats
        self._on_latency = on_latency
        self._turns: dict[int, TurnLatency] = {}
        self.latest = 0

    def begin(self, turn: int, voice_end: float, transcript: float) -> None:
        """Turn ``turn`` was transcribed: its person stopped at ``voice_end``."""
        self._turns[turn] = TurnLatency(turn=turn, voice_end=voice_end, transcript=transcript)
        self.latest = max(self.latest, turn)
        for old in [t for t in self._turns if t <= turn - KEEP_TURNS]:
            del self._turns[old]

    def get(self, turn: int) -> TurnLatency | None:
        """The stamps of ``turn`` so far (None: unknown or dropped)."""
        return self._turns.get(turn)

    def mark(self, stage: str, turn: int | None = None, at: float | None = None) -> None:
        """Stamp ``stage`` of ``turn`` (default: the latest) at ``at`` (default: now),
        unless it was stamped already; report the turn when its first video frame and
        first audio have both been sent."""
        number = self.latest if turn is None else turn
        latency = self._turns.get(number)
        if latency is None or getattr(latency, stage) is not None:
            return
        latency = replace(latency, **{stage: time.monotonic() if at is None else at})
        self._turns[number] = latency
        if stage in ("first_audio_sent", "first_video_sent") and (
            latency.first_audio_sent is not None and latency.first_video_sent is not None
        ):
            self._report(latency)

    def first_piece(self) -> None:
        """The LLM's first piece of the latest turn's reply."""
        self.mark("first_token")

    def audio_started(self, _media_time: float, wall: float) -> None:
        """``AudioOut.on_first_speech``: a run of speech began playing at ``wall``."""
        self.mark("first_audio_sent", at=wall)

    def frame_sent(self, tag: Any, _media_time: float, wall: float) -> None:
        """``VideoOut.on_frame_sent``: a frame left; ``tag`` is the turn of a speaking one."""
        if tag is not None:
            self.mark("first_video_sent", turn=tag, at=wall)

    def _report(self, latency: TurnLatency) -> None:
        stages = latency.stages_ms()
        log.info(
            "turn latency",
            session=self._session,
            turn=latency.turn,
            **{k: round(v, 1) for k, v in stages.items()},
        )
        self._send({"type": "metrics", "turn": latency.turn, "stages_ms": stages, **self._stats()})
        if self._on_latency is not None:
            self._on_latency(latency)


class TimedBackend:
    """A session's view of the shared LLM backend that reports each reply's first piece."""

    def __init__(self, backend: DialogueBackend, on_first: Callable[[], None]) -> None:
        self._backend = backend
        self._on_first = on_first
        self.name = backend.name

    async def stream(self, messages: Any, options: Any) -> Any:
        first = True
        async with contextlib.aclosing(self._backend.stream(messages, options)) as pieces:
            async for piece in pieces:
                if first:
                    first = False
                    self._on_first()
                yield piece

    async def warm(self, messages: Any, slot: str | None = None) -> None:
        """Pass prompt warming on to the shared backend (nothing if it cannot warm)."""
        if isinstance(self._backend, PromptWarming):
            await self._backend.warm(messages, slot)

    def forget(self, slot: str) -> None:
        """Pass on forgetting a person's saved prompt (see ``PromptWarming``)."""
        if isinstance(self._backend, PromptWarming):
            self._backend.forget(slot)

    async def aclose(self) -> None:
        """The shared backend outlives the session: nothing to close here."""
