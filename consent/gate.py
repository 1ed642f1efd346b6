"""The consent gate: may this avatar be animated here, now, for this purpose?

:func:`check` is a pure function (no I/O, no clock): the caller passes the grant,
the time, the public keys and whether the grant was revoked, and gets a
:class:`Decision`. :class:`ConsentGate` is the thin I/O wrapper the runtime holds:
it finds the grant in the store, calls :func:`check`, audits the decision and
exposes the revocation :meth:`ConsentGate.epoch` to re-check cheaply per chunk.
:func:`watch_grant` re-checks a live use whenever that epoch moves: pushed by the
gate's :class:`~consent.epoch_feed.EpochFeed` on PostgreSQL, polled on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.grants import ALL, Grant, format_time, utc, verify_signature
from consent.keys import SigningKeys

if TYPE_CHECKING:
    from consent.epoch_feed import EpochFeed
    from consent.store import ConsentStore
    from voice.tts.base import VoiceCloneGate, VoiceCloneRequest


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


async def watch_grant(
    gate: ConsentGate,
    *,
    avatar_id: str,
    deployment: str,
    purpose: str,
    want_voice: bool = False,
    every_s: float = 0.2,
    actor: str = "runtime",
) -> Decision:
    """Wait until the grant for (avatar, deployment, purpose) is refused; return the refusal.

    Checks now, then again whenever the revocation epoch moves (a revoke, a retention
    purge, a deployment's list edited) or the allowing grant's expiry has passed (an
    expiry moves no epoch). With the gate's epoch feed running (``gate.feed``,
    PostgreSQL) it waits on the pushed epoch, and returns a refusal as soon as the feed
    is blind (fail closed); without one it reads the epoch every ``every_s`` seconds.
    Database reads run in a worker thread; each check is audited as ``actor``. Returns
    at once when refused already. The caller must then stop using the face or voice;
    cancel the task to stop watching.
    """
    from consent.store import utcnow

    feed = gate.feed
    seen = feed.epoch if feed is not None else await asyncio.to_thread(gate.epoch)
    while True:
        if feed is not None and feed.blind:
            return _refuse(feed.blind_reason())
        decision = await asyncio.to_thread(
            gate.check,
            avatar_id=avatar_id,
            deployment=deployment,
            purpose=purpose,
            want_voice=want_voice,
            actor=actor,
        )
        if not decision.allowed or decision.grant_id is None:
            return decision
        record = await asyncio.to_thread(gate.store.grant, decision.grant_id)
        while (left := (record.grant.expires_at - utcnow()).total_seconds()) > 0:
            if feed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.wait_moved(seen), left)
                epoch = feed.epoch
            else:
                await asyncio.sleep(every_s)
                epoch = await asyncio.to_thread(gate.epoch)
            if epoch != seen or (feed is not None and feed.blind):
                seen = epoch
                break


__all__ = ["ConsentGate", "Decision", "check", "watch_grant"]
