"""Who may be served: one admission decision, asked at the offer and at every re-check.

:func:`decide` is pure (after ``consent.gate.check``): it takes the facts (the face's
grant decision, the deployment's list of faces, the cloned voice's grant decision,
whether this node still hears of revokes) and answers with an :class:`Admission`,
refusing in a fixed order with plain words.
:class:`AdmissionCheck` gathers those facts for one offer (blocking: database reads)
and calls :func:`decide`; :func:`watch_admission` re-asks it whenever the revocation
epoch moves or the grant expires, through ``consent.gate.watch_grant``; a re-check the
database does not answer is a refusal (fail closed).

:class:`ConsentUse` is the face's part: the gate's check of one face for one
deployment and purpose, remembering the grant used (the command line's
``runtime.animation.FacePermit`` uses it too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from consent.gate import UNCHECKED, Decision, watch_grant
from runtime.logs import get_logger

if TYPE_CHECKING:
    from consent.epoch_feed import EpochFeed
    from consent.gate import ConsentGate
    from consent.store import ConsentStore

ALLOWED, FORBIDDEN, UNAVAILABLE = 200, 403, 503
log = get_logger("likeness.session")


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this session be served (still)?".

    Attributes:
        allowed: True only when every check passed.
        status: the HTTP status of the answer: 200, 403 for a refusal, or 503 when this
            node cannot follow revocations now (another node may serve it).
        reason: in plain words, why; a refusal's reason is what the client is told.
        grant_id: the face's grant (None for the synthetic face or a refusal without one).
    """

    allowed: bool
    status: int
    reason: str
    grant_id: str | None = None


def decide(
    *,
    deployment: str,
    face: Decision | None,
    listed: bool | None,
    voice: Decision | None,
    blind: str | None = None,
) -> Admission:
    """Admit or refuse, in this order: the face's grant, the deployment's list, the
    voice, then a real face on a node that cannot follow revocations now (503: another
    node may serve it).

    Args:
        deployment: where the session runs (named in a refusal).
        face: the gate's decision on the face; None for the synthetic face (it needs none).
        listed: whether a registered deployment's operator listed the face; None for an
            unregistered deployment (the grant's scope alone decides) or no face.
        voice: the gate's decision on the cloned voice here; None when no cloned voice
            is in use.
        blind: why this node cannot follow revocations now (its epoch feed is blind,
            ``consent.epoch_feed``); None when it can. Only a real face is refused for it.
    """
    if face is not None and not face.allowed:
        return Admission(
            False, FORBIDDEN, f"no permission to use this face: {face.reason}", face.grant_id
        )
    if face is not None and listed is False:
        return Admission(
            False, FORBIDDEN, f"deployment {deployment!r} is not set up to show this face"
        )
    if voice is not None and not voice.allowed:
        return Admission(False, FORBIDDEN, f"no permission to use this voice here: {voice.reason}")
    if face is None:
        return Admission(True, ALLOWED, "the synthetic face needs no grant")
    if blind is not None:
        return Admission(False, UNAVAILABLE, blind, face.grant_id)
    return Admission(True, ALLOWED, face.reason, face.grant_id)


@dataclass
class ConsentUse:
    """What a session showing a real person's face may do, and how to re-check it.

    Call :meth:`check` before building the session: an allowed decision sets
    :attr:`grant_id`, the grant whose id the session's frames carry in their watermark.
    """

    gate: ConsentGate
    avatar_id: str
    deployment: str
    purpose: str
    grant_id: str | None = field(default=None, compare=False)  # set by an allowed check()
    expires_at: float = field(default=float("inf"), compare=False)  # that grant's expiry

    def check(self) -> Decision:
        """The gate's decision now (blocking: database reads); remembers the grant used
        and when it expires (an expiry moves no revocation epoch, so the session watches
        the time too)."""
        decision = self.gate.check(
            avatar_id=self.avatar_id, deployment=self.deployment, purpose=self.purpose
        )
        if decision.allowed:
            self.grant_id = decision.grant_id
            if decision.grant_id is not None:
                grant = self.gate.store.grant(decision.grant_id).grant
                self.expires_at = grant.expires_at.timestamp()
        return decision


def _always() -> bool:
    return True


@dataclass
class AdmissionCheck:
    """The facts of one offer's admission and how to fetch them; call it for the
    :class:`Admission` now (blocking: database reads, each gate check audited).

    Attributes:
        gate: the consent gate (None only when neither a face nor a voice needs it).
        deployment: where the session runs.
        purpose: what the face (and voice) are used for.
        face: the real person's face shown; None for the synthetic face.
        voice_id: the avatar id whose cloned voice speaks; None for a stock voice.
        voice_in_use: False once the server fell back to the stock voice (the cloned
            voice's grant no longer matters).
    """

    gate: ConsentGate | None
    deployment: str
    purpose: str
    face: ConsentUse | None = None
    voice_id: str | None = None
    voice_in_use: Callable[[], bool] = _always

    def __call__(self) -> Admission:
        """Ask the gate (face, then the deployment's list, then the voice, stopping at
        the first refusal) and decide.

        A node blind to revocations asks nothing for a real face and answers 503 at
        once: its database may be reachable only through a silent link, where every
        read hangs, and the next node gives the definitive answer.
        """
        from consent.portal import deployment_allows

        feed = self.gate.feed if self.gate is not None else None
        if self.face is not None and feed is not None and feed.blind:
            return Admission(False, UNAVAILABLE, feed.blind_reason())
        face: Decision | None = None
        listed: bool | None = None
        voice: Decision | None = None
        if self.face is not None:
            face = self.face.check()
            if face.allowed:
                listed = deployment_allows(self._gate.store, self.deployment, self.face.avatar_id)
        refused = (face is not None and not face.allowed) or listed is False
        if not refused and self.voice_id is not None and self.voice_in_use():
            voice = self._gate.check(
                avatar_id=self.voice_id,
                deployment=self.deployment,
                purpose=self.purpose,
                want_voice=True,
                actor="tts",
            )
        blind = feed.blind_reason() if feed is not None and feed.blind else None
        return decide(
            deployment=self.deployment, face=face, listed=listed, voice=voice, blind=blind
        )

    @property
    def _gate(self) -> ConsentGate:
        if self.gate is None:
            raise ValueError("this admission needs a consent gate")
        return self.gate


class _AdmissionGate:
    """What ``consent.gate.watch_grant`` uses of a gate, where each check is the whole
    admission. ``on_allowed`` gets every allowed admission (in a worker thread)."""

    def __init__(self, check: AdmissionCheck, on_allowed: Callable[[Admission], None]) -> None:
        self._check = check
        self._on_allowed = on_allowed

    @property
    def store(self) -> ConsentStore:
        return self._check._gate.store

    @property
    def feed(self) -> EpochFeed | None:
        return self._check._gate.feed

    def epoch(self) -> int:
        return self._check._gate.epoch()

    def check(self, **_scope: Any) -> Decision:
        admission = self._check()
        if admission.allowed:
            self._on_allowed(admission)
        return Decision(admission.allowed, admission.reason, grant_id=admission.grant_id)


async def watch_admission(
    check: AdmissionCheck,
    every_s: float,
    on_allowed: Callable[[Admission], None],
    *,
    blind_after_s: float = 5.0,
) -> Decision:
    """Wait until the admission of a face's session is refused; return the refusal.

    Through ``consent.gate.watch_grant``: asks now, then again whenever the revocation
    epoch moves or the face's grant expires; ends at once when the gate's epoch feed
    is blind (PostgreSQL: this node no longer hears of revokes), and when the database
    has not answered a re-check for ``blind_after_s`` seconds (``consent.blind_after_s``;
    a non-retryable error ends it at once). ``on_allowed`` is
    called, in a worker thread, with each allowed admission (the grant may change:
    follow it). The caller must then withdraw the face; cancel the task to stop watching.

    Raises:
        ValueError: ``check`` has no face (the synthetic face is never re-checked).
    """
    face = check.face
    if face is None:
        raise ValueError("only a real person's face is re-checked")
    return await watch_grant(
        _AdmissionGate(check, on_allowed),  # type: ignore[arg-type]
        avatar_id=face.avatar_id,
        deployment=check.deployment,
        purpose=check.purpose,
        every_s=every_s,
        blind_after_s=blind_after_s,
    )


async def hold_admission(
    check: AdmissionCheck,
    session: str,
    every_s: float,
    on_allowed: Callable[[Admission], None],
    on_refused: Callable[[str], Awaitable[None]],
    *,
    blind_after_s: float = 5.0,
) -> None:
    """A session's use of a face, from start to end: audited as ``use_start``, watched
    with :func:`watch_admission`; ``await on_refused(reason)`` once refused, then
    audited as ``use_end`` (also when the task is cancelled: the session ended).

    Fails closed: should ``use_start`` or the watch itself fail, that is a refusal too
    (the reason is ``consent.gate.UNCHECKED``; the error is logged).
    """
    face, gate = check.face, check._gate
    if face is None:
        raise ValueError("only a real person's face is re-checked")
    record = partial(
        gate.record_use, avatar_id=face.avatar_id, deployment=check.deployment, session=session
    )
    try:
        try:
            await asyncio.to_thread(record, "use_start")
            watch = watch_admission(check, every_s, on_allowed, blind_after_s=blind_after_s)
            reason = (await watch).reason
        except Exception as err:  # noqa: BLE001 - no answer is no permission
            log.error("consent watch failed: face withdrawn", session=session, error=repr(err))
            reason = UNCHECKED
        await on_refused(reason)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(record, "use_end")
