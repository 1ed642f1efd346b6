"""The consent portal: people grant, review and revoke; operators and auditors do their part.

Pages are static (``web/static/portal/``); this package is the JSON API under
``/api/consent/`` (``api.py`` lists the routes) and what it stands on:

- ``auth.py``: sessions, CSRF, origins, passwords, rate limits, :class:`Principal`,
  :func:`~consent.portal.auth.can_act_for`;
- ``accounts.py``: users, sessions and guardian links; ``passkeys.py``: WebAuthn;
- ``deployments.py``: deployments and :func:`deployment_allows`;
- ``data.py``: grants with usage, export, deletion; ``models.py``: the tables.

Roles: a ``subject`` acts on their own grants; a ``guardian`` (a person linked by the
subject, or by an operator with a recorded basis) on the linked subjects' grants; an
``operator`` manages deployments and links guardians but never grants; an ``auditor``
reads and verifies the audit log and nothing else.

Wiring (``runtime/server.py``)::

    Mount list: ..., mount(for_gate(settings, lambda: companion.gate, ice)), Mount("/", static)

The context is built on the first request after the server's consent gate is loaded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from consent.keys import SigningKeys
from consent.portal.auth import SCOPE_KEY, PortalError, RateLimiter
from consent.portal.deployments import deployment_allows

if TYPE_CHECKING:
    from consent.store import ConsentStore

PREFIX = "/api/consent"


class DirectOnly:
    """No STUN or TURN: the page reaches the server by its host candidates."""

    @staticmethod
    def aiortc_servers() -> list[Any]:
        return []

    @staticmethod
    def for_page() -> dict[str, Any]:
        return {"iceServers": [], "iceTransportPolicy": "all", "expires_at": None}


class PortalContext:
    """What the portal's routes share.

    Args:
        store: the consent store (the gate's: ``companion.gate.store``).
        keys: the server's signing keys (grants issued in the portal are signed with them).
        settings: ``runtime.config.Settings`` (``portal`` section, ``data_dir``, ...).
        enrolment: a loaded ``consent.enrolment.Enrolment``, or None to load it on first
            use (:meth:`enrolment_service`).
        ice: returns the ICE servers as configured now, an object with
            ``aiortc_servers()`` (the ceremony's server peer, aiortc ``RTCIceServer``) and
            ``for_page()`` (the page's ``RTCPeerConnection`` configuration), TURN
            credentials fresh (``runtime.turn.IceProvider``); it may raise
            :class:`~consent.portal.auth.PortalError` (503). None = host candidates only.

    Attributes:
        signin_limiter: sign-in attempts per client address (``portal.signin_per_minute``).
        challenge_limiter: challenges issued per user (``portal.challenges_per_hour``);
            the enrolment and passkey routes count on it.
    """

    def __init__(
        self,
        store: ConsentStore,
        keys: SigningKeys,
        settings: Any,
        enrolment: Any = None,
        ice: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.ice: Callable[[], Any] = ice or DirectOnly
        self.keys = keys
        self.settings = settings
        self.enrolment = enrolment
        portal = settings.portal
        self.signin_limiter = RateLimiter(portal.signin_per_minute, 60.0)
        self.challenge_limiter = RateLimiter(portal.challenges_per_hour, 3600.0)
        self._enrol_lock = asyncio.Lock()

    @classmethod
    def load(cls, settings: Any, store: ConsentStore) -> PortalContext:
        """The context over ``store`` with the signing keys of the data dir (blocking: files)."""
        return cls(store, SigningKeys.load(settings.data_dir / "consent" / "signing"), settings)

    async def enrolment_service(self) -> Any:
        """The enrolment service, loaded once on first use (face models + Whisper, seconds).

        Raises:
            PortalError: 503 when this installation has no enrolment service.
        """
        if self.enrolment is None:
            async with self._enrol_lock:
                if self.enrolment is None:
                    try:
                        from consent.enrolment import Enrolment
                    except ImportError:
                        message = "enrolment is not available on this server"
                        raise PortalError(503, message) from None
                    self.enrolment = await asyncio.to_thread(
                        Enrolment.load, self.settings, self.store
                    )
        return self.enrolment

    def routes(self) -> list[BaseRoute]:
        """The portal's mount (``/api/consent``), bound to this context."""
        return [mount(lambda: self)]


class _WithContext:
    """ASGI middleware: put the portal context into the scope (or leave it out: 503)."""

    def __init__(self, app: ASGIApp, context: Callable[[], PortalContext | None]) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ctx = self.context()
            if ctx is not None:
                scope[SCOPE_KEY] = ctx
        await self.app(scope, receive, send)


def mount(context: Callable[[], PortalContext | None]) -> Mount:
    """The ``/api/consent`` mount; ``context()`` returns the context (None while starting)."""
    from consent.portal.api import routes

    return Mount(
        PREFIX,
        routes=routes(),
        middleware=[Middleware(_WithContext, context=context)],
        name="consent-portal",
    )


def for_gate(
    settings: Any, gate: Callable[[], Any], ice: Callable[[], Any] | None = None
) -> Callable[[], PortalContext | None]:
    """A context provider over the server's consent gate, built once on first use.

    Args:
        settings: the server's settings.
        gate: returns the loaded ``ConsentGate`` (or None while the server starts).
        ice: the enrolment ceremony's ICE servers (see :class:`PortalContext`).
    """
    box: list[PortalContext] = []
    lock = threading.Lock()

    def provide() -> PortalContext | None:
        if box:
            return box[0]
        loaded = gate()
        if loaded is None:
            return None
        with lock:
            if not box:
                context = PortalContext.load(settings, loaded.store)
                context.ice = ice or DirectOnly
                box.append(context)
        return box[0]

    return provide


__all__ = ["PREFIX", "PortalContext", "deployment_allows", "for_gate", "mount"]
