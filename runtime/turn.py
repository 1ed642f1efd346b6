"""ICE servers for a session: STUN, and TURN with short-lived credentials.

coturn's REST-API scheme (``use-auth-secret`` + ``static-auth-secret`` in
``turnserver.conf``): the server and the TURN relay share a secret; for each session
the server mints::

    username   = "<unix time the credential expires>:<user>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the HMAC and refuses an expired time, so a credential is useless
after ``ttl_s`` for a new allocation (an allocation made in time keeps its key until
it ends: coturn checks the time once, when the allocation is made).

:class:`IceProvider` turns ``server.ice_servers`` into what each peer needs: the page's
JSON (``iceServers`` + ``iceTransportPolicy``, see ``POST /api/rtc/ice`` in
:mod:`runtime.server`) and the server's own :class:`aiortc.RTCConfiguration`. A TURN
URL configured without a static username/credential gets minted ones; STUN URLs get
none. Credentials never appear in a ``repr`` or a log line.

aiortc uses only the first STUN and the first TURN server of a list (browsers use all):
:meth:`IceProvider.rtc_configuration` passes them all and :func:`aiortc_notes` says
what aiortc will ignore, for the start-up log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

from runtime.errors import ConfigError, LikenessError

if TYPE_CHECKING:
    from runtime.config import ServerConfig

TURN_SCHEMES = ("turn:", "turns:")
Policy = Literal["all", "relay"]
SERVER_USER = "likeness-server"


def is_turn(url: str) -> bool:
    """Whether ``url`` names a TURN server (``turn:`` or ``turns:``)."""
    return url.lower().startswith(TURN_SCHEMES)


def rest_credentials(secret: str | bytes, user: str, ttl_s: int, now: float) -> tuple[str, str]:
    """One TURN username and password in coturn's REST-API scheme.

    Args:
        secret: coturn's ``static-auth-secret``.
        user: who it is for (any text without ``:``; an opaque per-session id).
        ttl_s: seconds until it expires (> 0).
        now: unix seconds.

    Returns:
        ``(username, credential)``: ``"<expiry>:<user>"`` and its base64 HMAC-SHA1.

    Raises:
        ValueError: an empty secret, a ``:`` in ``user`` or a non-positive ``ttl_s``.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the TURN secret is empty")
    if ":" in user:
        raise ValueError("a TURN user may not contain ':'")
    if ttl_s <= 0:
        raise ValueError("a TURN credential needs a positive lifetime")
    username = f"{int(now) + ttl_s}:{user}"
    digest = hmac.new(key, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def expiry_of(username: str) -> int:
    """The unix time a REST-API username expires (its part before the first ``:``).

    Raises:
        ValueError: not a REST-API username.
    """
    head, sep, _ = username.partition(":")
    if not sep or not head.isdigit():
        raise ValueError("not a TURN REST-API username (expected '<expiry>:<user>')")
    return int(head)


@dataclass(frozen=True, slots=True)
class IceServer:
    """One entry of a peer's ``iceServers``, credentials included (kept out of ``repr``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The browser's ``RTCIceServer`` dictionary."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out

    def to_aiortc(self) -> RTCIceServer:
        """aiortc's ``RTCIceServer`` (always a list of URLs)."""
        return RTCIceServer(
            urls=list(self.urls), username=self.username, credential=self.credential
        )


def read_secret(value: str | None, path: str) -> str | None:
    """The TURN secret: ``server.turn_secret``, or the file ``server.turn_secret_file``.

    Raises:
        ConfigError: both given, the file unreadable or empty.
    """
    if value and path:
        raise ConfigError("server.turn_secret_file: give either turn_secret or turn_secret_file")
    if not path:
        return value or None
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as err:
        raise ConfigError(f"server.turn_secret_file: cannot read it ({err.strerror})") from None
    if not text:
        raise ConfigError("server.turn_secret_file: the file is empty")
    return text


class IceProvider:
    """What every peer of this server gets as ICE servers, with fresh TURN credentials.

    Args:
        servers: ``(urls, username, credential)`` as configured; TURN entries without a
            username/credential get minted ones (they need ``secret``).
        secret: coturn's ``static-auth-secret``, or None.
        ttl_s: lifetime of a minted credential.
        policy: the page's ``iceTransportPolicy``: ``"relay"`` sends media only through TURN.
        clock: unix seconds (tests pass their own).

    Raises:
        ConfigError: a TURN URL with neither static credentials nor a secret, or a
            relay-only policy without any TURN server.
    """

    def __init__(
        self,
        servers: Sequence[tuple[Sequence[str], str, str | None]],
        secret: str | None = None,
        ttl_s: int = 600,
        policy: Policy = "all",
        clock: Any = time.time,
    ) -> None:
        self._servers = [(tuple(urls), user, cred) for urls, user, cred in servers]
        self._secret = secret
        self.ttl_s = ttl_s
        self.policy = policy
        self._clock = clock
        for i, (urls, user, cred) in enumerate(self._servers):
            minted = any(is_turn(u) for u in urls) and not (user and cred)
            if minted and not secret:
                raise ConfigError(
                    f"server.ice_servers[{i}]: a TURN server needs username and credential, "
                    "or server.turn_secret (coturn use-auth-secret)"
                )
        if policy == "relay" and not self.has_turn:
            raise ConfigError("server.ice_transport_policy: 'relay' needs a turn: server")

    @classmethod
    def from_config(cls, server: ServerConfig) -> IceProvider:
        """The provider of ``settings.server`` (reads ``turn_secret_file``; fails fast)."""
        secret = read_secret(
            server.turn_secret.get_secret_value() if server.turn_secret else None,
            server.turn_secret_file,
        )
        entries = [
            (s.urls, s.username, s.credential.get_secret_value() if s.credential else None)
            for s in server.ice_servers
        ]
        return cls(entries, secret, server.turn_ttl_s, server.ice_transport_policy)

    def __repr__(self) -> str:
        urls = [u for urls, _, _ in self._servers for u in urls]
        return f"IceProvider(urls={urls!r}, policy={self.policy!r}, ttl_s={self.ttl_s})"

    @property
    def has_turn(self) -> bool:
        return any(is_turn(u) for urls, _, _ in self._servers for u in urls)

    def servers(self, user: str | None = None) -> list[IceServer]:
        """The ICE servers for one peer; minted TURN credentials name ``user``
        (a fresh random id when None) and expire ``ttl_s`` from now."""
        user = user or secrets.token_hex(8)
        out: list[IceServer] = []
        minted: tuple[str, str] | None = None
        for urls, username, credential in self._servers:
            if any(is_turn(u) for u in urls) and not (username and credential):
                assert self._secret is not None  # checked in __init__
                minted = minted or rest_credentials(self._secret, user, self.ttl_s, self._clock())
                username, credential = minted
            elif not any(is_turn(u) for u in urls):
                username, credential = None, None  # STUN takes no credentials
            out.append(IceServer(urls, username or None, credential or None))
        return out

    def for_page(self, user: str | None = None) -> dict[str, Any]:
        """The JSON a page hands to ``new RTCPeerConnection(...)``, plus when it expires."""
        return {
            "iceServers": [s.to_json() for s in self.servers(user)],
            "iceTransportPolicy": self.policy,
            "expires_at": int(self._clock()) + self.ttl_s if self.has_turn else None,
        }

    def aiortc_servers(self, user: str = SERVER_USER) -> list[RTCIceServer]:
        """The server's own ICE servers for one peer connection, credentials fresh."""
        return [s.to_aiortc() for s in self.servers(user)]

    def rtc_configuration(self, user: str = SERVER_USER) -> RTCConfiguration:
        """The server's own peer configuration (always a list: aiortc then contacts no
        public STUN host of its own). The server gathers every kind of candidate: a
        relay-only page reaches its host candidates through the relay."""
        return RTCConfiguration(iceServers=self.aiortc_servers(user))

    def aiortc_notes(self) -> list[str]:
        """What aiortc will ignore in this list (it uses the first STUN and first TURN)."""
        urls = [u for urls, _, _ in self._servers for u in urls]
        notes = []
        if sum(is_turn(u) for u in urls) > 1:
            notes.append("aiortc uses only the first TURN URL on the server side")
        if sum(u.lower().startswith("stun:") for u in urls) > 1:
            notes.append("aiortc uses only the first STUN URL on the server side")
        return notes


# -- the client's side (tests, benchmarks, tools) ------------------------------------------


class RelayUnavailableError(LikenessError, ConnectionError):
    """A relay-only peer gathered no relay candidate: the TURN server is unreachable or
    refused the credentials (missing, forged, expired, or minted with another secret)."""


def page_configuration(page: dict[str, Any]) -> RTCConfiguration:
    """aiortc's configuration from the JSON of ``POST /api/rtc/ice`` (what a page gets).

    Raises:
        ValueError: not that JSON.
    """
    servers = page.get("iceServers")
    policy = page.get("iceTransportPolicy", "all")
    if not isinstance(servers, list) or policy not in ("all", "relay"):
        raise ValueError("expected {'iceServers': [...], 'iceTransportPolicy': 'all'|'relay'}")
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers
        ],
        iceTransportPolicy=RTCIceTransportPolicy(policy),
    )


def relay_candidates(sdp: str) -> int:
    """How many relay candidates an SDP carries."""
    return sum(
        1 for line in sdp.splitlines() if line.startswith("a=candidate") and " typ relay" in line
    )


async def check_relay(configuration: RTCConfiguration) -> None:
    """Gather once with ``configuration`` and fail clearly when relay-only cannot work.

    Call it before offering with a relay-only configuration: aiortc itself sends an offer
    without a single candidate and the session then fails without saying why. It costs
    one TURN allocation, released at once.

    Raises:
        RelayUnavailableError: relay-only and no TURN server with credentials, or no
            relay candidate came back (TURN refused or unreachable).
    """
    if configuration.iceTransportPolicy != RTCIceTransportPolicy.RELAY:
        return
    turn = [
        s
        for s in configuration.iceServers or []
        if any(is_turn(u) for u in ([s.urls] if isinstance(s.urls, str) else s.urls))
    ]
    if not turn or not all(s.username and s.credential for s in turn):
        raise RelayUnavailableError(
            "relay-only ICE needs a TURN server with a username and credential "
            "(ask the server: POST /api/rtc/ice)"
        )
    pc = RTCPeerConnection(configuration)
    try:
        pc.createDataChannel("probe")
        await pc.setLocalDescription(await pc.createOffer())
        if not relay_candidates(pc.localDescription.sdp):
            raise RelayUnavailableError(
                "relay-only ICE gathered no relay candidate: the TURN server "
                f"({', '.join(str(s.urls) for s in turn)}) refused the credentials "
                "(expired, or minted with another secret) or cannot be reached"
            )
    finally:
        await pc.close()


async def page_ice(base_url: str, timeout_s: float = 10.0) -> RTCConfiguration:
    """What a page does before connecting: ``POST /api/rtc/ice``, then, when relay-only,
    :func:`check_relay`. For aiortc clients (tests, benchmarks).

    Raises:
        httpx.HTTPStatusError: the server refused (429, 503).
        RelayUnavailableError: relay-only and no relay candidate.
    """
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as http:
        response = await http.post(f"{base_url.rstrip('/')}/api/rtc/ice")
        response.raise_for_status()
    config = page_configuration(response.json())
    await check_relay(config)
    return config
