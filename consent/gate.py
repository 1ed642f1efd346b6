"""The consent gate: may this avatar be animated here, now, for this purpose?

:func:`check` is a pure function (no I/O, no clock): the caller passes the grant,
the time, the public keys and whether the grant was revoked, and gets a
:class:`Decision`. :class:`ConsentGate` is the thin I/O wrapper the runtime holds:
it finds the grant in the store, calls :func:`check`, audits the decision and
exposes the revocation :meth:`ConsentGate.epoch` to re-check cheaply per chunk.
:func:`watch_grant` re-checks a live use whenever that epoch moves: pushed by the
gate's :class:`~consent.epoch_feed.EpochFeed` on PostgreSQL, polled on SQLite; a
database that does not answer a re-check is a refusal (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.grants import ALL, Grant, format_time, utc, verify_signature
from consent.keys import SigningKeys

if TYPE_CHECKING:
    from consent.epoch_feed import EpochFeed
    from consent.store import ConsentStore
    from voice.tts.base import VoiceCloneGate, VoiceCloneRequest

log = structlog.get_logger("likeness.consent")
T = TypeVar("T")

UNCHECKED = (
    "permission could not be re-checked: the consent database did not answer, so a real "
    "person's likeness cannot be shown until it does"
)
"""The refusal of a watch that got no answer from the database (fail closed)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer.

    Attributes:
        allowed: True only when every check passed.
        reason: in plain words, why it was allowed or refused.
        conditions: what the runtime must do while using the grant (empty when refused).
        grant_id: the grant the decision is about, if any.
    """

    allowed: bool
    reason: str
    conditions: Mapping[str, Any] = field(default_factory=dict, hash=False)
    grant_id: str | None = None


def _refuse(reason: str, grant: Grant | None = None) -> Decision:
    return Decision(False, reason, MappingProxyType({}), grant.id if grant else None)


def check(
    grant: Grant | None,
    *,
    avatar_id: str,
    deployment: str,
    purpose: str,
    want_voice: bool,
    now: datetime,
    keys_public: Mapping[str, Ed25519PublicKey],
    revoked: bool,
) -> Decision:
    """Decide whether ``grant`` allows animating ``avatar_id`` (and its voice if asked).

    Refuses, in this order: no grant, a key id it does not know, a bad/forged
    signature or an altered field, revoked, expired, another avatar, face not
    allowed, voice asked without a voice grant, deployment out of scope, purpose
    out of scope. Pure: the same arguments always give the same decision.
    """
    if grant is None:
        return _refuse(f"no consent grant exists for avatar {avatar_id}")
    if grant.key_id not in keys_public:
        return _refuse(f"grant {grant.id} is signed by unknown key {grant.key_id!r}", grant)
    if not verify_signature(grant, keys_public):
        return _refuse(
            f"grant {grant.id} has an invalid signature (forged or altered after signing)", grant
        )
    if revoked:
        return _refuse(f"grant {grant.id} was revoked", grant)
    if utc(now) >= grant.expires_at:
        return _refuse(f"grant {grant.id} expired at {format_time(grant.expires_at)}", grant)
    if grant.avatar_id != avatar_id:
        return _refuse(f"grant {grant.id} is for another photo, not avatar {avatar_id}", grant)
    if not grant.allow_face:
        return _refuse(f"grant {grant.id} does not allow animating the face", grant)
    if want_voice and not grant.allow_voice:
        return _refuse(f"grant {grant.id} does not allow using the voice", grant)
    if ALL not in grant.deployments and deployment not in grant.deployments:
        return _refuse(f"grant {grant.id} does not cover deployment {deployment!r}", grant)
    if ALL not in grant.purposes and purpose not in grant.purposes:
        return _refuse(f"grant {grant.id} does not cover purpose {purpose!r}", grant)
    what = "face and voice" if want_voice else "face"
    return Decision(
        True,
        f"grant {grant.id} allows the {what} for {purpose!r} in {deployment!r}",
        grant.conditions,
        grant.id,
    )


class ConsentGate:
    """The runtime's handle on consent: :meth:`check` at session start, :meth:`epoch` per chunk.

    Per chunk, compare :meth:`epoch` with the value seen at the last check; when it
    moved, call :meth:`check` again and end the session if it is refused.

    Attributes:
        feed: the process's running epoch feed (PostgreSQL), which :func:`watch_grant`
            waits on instead of polling; None on SQLite or while none runs. The server
            sets it once its feed has started.
    """

    def __init__(self, store: ConsentStore, keys: SigningKeys | Mapping[str, Any]) -> None:
        self._store = store
        self._keys = keys
        self.feed: EpochFeed | None = None

    @property
    def store(self) -> ConsentStore:
        """The store behind this gate (operators' commands, the portal)."""
        return self._store

    def _public(self) -> dict[str, Ed25519PublicKey]:
        if isinstance(self._keys, SigningKeys):
            return self._keys.public_keys()
        return dict(self._keys)

    def check(
        self,
        *,
        avatar_id: str,
        deployment: str,
        purpose: str,
        want_voice: bool = False,
        now: datetime | None = None,
        actor: str = "runtime",
    ) -> Decision:
        """Find the grant for (avatar, deployment, purpose), decide, and audit the decision.

        The first grant of the avatar that allows it wins; when none does, the refusal
        about the newest grant (or "no grant") is returned.
        """
        from consent.store import utcnow

        when = utcnow() if now is None else utc(now)
        keys = self._public()
        decide = partial(
            check,
            avatar_id=avatar_id,
            deployment=deployment,
            purpose=purpose,
            want_voice=want_voice,
            now=when,
            keys_public=keys,
        )
        decision: Decision | None = None
        for grant, revoked in self._store.grants_for_avatar(avatar_id):
            d = decide(grant, revoked=revoked)
            if d.allowed:
                decision = d
                break
            decision = decision or d
        if decision is None:
            decision = decide(None, revoked=False)
        subject = self._store.subject_of_avatar(avatar_id)
        self._store.append_audit(
            actor,
            "check",
            subject,
            {
                "avatar_id": avatar_id,
                "deployment": deployment,
                "purpose": purpose,
                "want_voice": want_voice,
                "allowed": decision.allowed,
                "reason": decision.reason,
                "grant_id": decision.grant_id,
            },
        )
        return decision

    def voice_clone_gate(self, deployment: str) -> VoiceCloneGate:
        """The ``voice.tts`` consent hook for ``deployment``.

        A clone is allowed only when ``request.voice_id`` is an avatar id whose grant
        allows the voice for ``request.purpose`` in ``deployment``; each call is audited.
        Hand the result to the TTS backend (``runtime.components.load_tts``).
        """

        def allow(request: VoiceCloneRequest) -> bool:
            if not request.voice_id:
                return False
            decision = self.check(
                avatar_id=request.voice_id,
                deployment=deployment,
                purpose=request.purpose,
                want_voice=True,
                actor="tts",
            )
            return decision.allowed

        return allow

    def epoch(self) -> int:
        """The store's revocation epoch: it only grows, and grows on every revoke."""
        return self._store.epoch()

    def record_use(self, action: str, *, avatar_id: str, deployment: str, session: str) -> None:
        """Audit a use of a face: ``action`` is "use_start" or "use_end"."""
        subject = self._store.subject_of_avatar(avatar_id)
        details = {"avatar_id": avatar_id, "deployment": deployment, "session": session}
        self._store.append_audit("runtime", action, subject, details)


class _Unreadable(Exception):
    """A re-check got no answer from the database (:func:`_read`); the watch fails closed."""


async def _read(call: Callable[..., T], /, *args: Any, bound_s: float, pause_s: float) -> T:
    """``call(*args)`` in a worker thread, for a watch that must fail closed.

    A retryable ``StoreError`` (connection lost, lock timeout) is tried again every
    ``pause_s`` seconds; once ``bound_s`` seconds have passed since the first try (a
    hung call included), or at once on any other error, raises :class:`_Unreadable`.
    """
    from consent.errors import StoreError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    last = ""
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.to_thread(call, *args)
        except TimeoutError as err:
            raise _Unreadable(f"no answer within {bound_s:g} s {last}".rstrip()) from err
        except StoreError as err:
            if not err.retryable or loop.time() >= deadline:
                raise _Unreadable(f"{type(err).__name__}: {err}") from err
            last = f"(last: {type(err).__name__}: {err})"
            log.warning("consent re-check failed; retrying", error=f"{type(err).__name__}: {err}")
            await asyncio.sleep(min(pause_s, deadline - loop.time()))
        except Exception as err:  # noqa: BLE001 - any failure: no answer, so no permission
            raise _Unreadable(f"{type(err).__name__}: {err}") from err


async def watch_grant(
    gate: ConsentGate,
    *,
    avatar_id: str,
    deployment: str,
    purpose: str,
    want_voice: bool = False,
    every_s: float = 0.2,
    blind_after_s: float = 5.0,
    actor: str = "runtime",
) -> Decision:
    """Wait until the grant for (avatar, deployment, purpose) is refused; return the refusal.

    Checks now, then again whenever the revocation epoch moves (a revoke, a subject's
    data deleted, a retention purge, a deployment's list edited) or the allowing grant's
    expiry has passed (an expiry moves no epoch). With the gate's epoch feed running
    (``gate.feed``, PostgreSQL) it waits on the pushed epoch, and returns a refusal as
    soon as the feed is blind (fail closed); without one it reads the epoch every
    ``every_s`` seconds. Database reads run in a worker thread; each check is audited
    as ``actor``.

    Fails closed on a database error too: a read that fails with a retryable error is
    tried again every ``every_s`` seconds, for at most ``blind_after_s`` seconds
    (``consent.blind_after_s``, the bound a node may be blind to revokes); past that,
    or at once on any other error, the watch returns a refusal. Returns at once when
    refused already. The caller must then stop using the face or voice; cancel the
    task to stop watching.
    """
    from consent.store import utcnow

    read = partial(_read, bound_s=blind_after_s, pause_s=every_s)
    check_now = partial(
        gate.check,
        avatar_id=avatar_id,
        deployment=deployment,
        purpose=purpose,
        want_voice=want_voice,
        actor=actor,
    )
    feed = gate.feed
    try:
        seen = feed.epoch if feed is not None else await read(gate.epoch)
        while True:
            if feed is not None and feed.blind:
                return _refuse(feed.blind_reason())
            decision = await read(check_now)
            if not decision.allowed or decision.grant_id is None:
                return decision
            record = await read(gate.store.grant, decision.grant_id)
            while (left := (record.grant.expires_at - utcnow()).total_seconds()) > 0:
                if feed is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(feed.wait_moved(seen), left)
                    epoch = feed.epoch
                else:
                    await asyncio.sleep(every_s)
                    epoch = await read(gate.epoch)
                if epoch != seen or (feed is not None and feed.blind):
                    seen = epoch
                    break
    except _Unreadable as err:
        log.error("consent re-check failed: permission withdrawn (fail closed)", error=str(err))
        return _refuse(UNCHECKED)


__all__ = ["UNCHECKED", "ConsentGate", "Decision", "check", "watch_grant"]
