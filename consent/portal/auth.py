"""Who is asking: sessions, CSRF, origins, passwords, rate limits and who may act for whom.

A signed-in browser holds one cookie (``likeness_portal``): a random token; the
database keeps only its sha256 (``portal_sessions``) next to the session's CSRF token.
Every state-changing request (POST/PUT/DELETE) must then send that CSRF token in the
``X-CSRF-Token`` header (the page reads it from ``GET /api/consent/auth/me``), and a
request whose ``Origin`` (when the browser sends one) is not the portal's own is
refused. Requests made before signing in (sign-up, sign-in) must be JSON from the
portal's origin: a cross-site form cannot send ``Content-Type: application/json``
without a CORS preflight, which this server never grants.

The functions here read the :class:`~consent.portal.PortalContext` from the request
scope (``scope["likeness.portal"]``, set by the portal's mount).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from consent import ConsentError

if TYPE_CHECKING:
    from consent.portal import PortalContext
    from consent.store import ConsentStore

SESSION_COOKIE = "likeness_portal"
CSRF_HEADER = "x-csrf-token"
SCOPE_KEY = "likeness.portal"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALL_ROLES = frozenset({"subject", "guardian", "operator", "auditor"})

# argon2id with argon2-cffi's defaults (RFC 9106 low-memory: t=3, m=64 MiB, p=4).
_HASHER = PasswordHasher()
# Checked against when the email is unknown, so both answers take as long.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class PortalError(ConsentError):
    """A request the portal refuses; sent as ``{"error": message}`` with ``status``.

    Args:
        status: the HTTP status (400 bad input, 401 not signed in, 403 not allowed,
            404 no such thing you may see, 409 conflict, 422 unusable value, 429 slow down).
        message: plain words for the person; never names another person's data.
        headers: extra response headers (``Retry-After`` for 429).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in user.

    Attributes:
        user_id: the portal account id.
        email: the account's email (lower case).
        roles: a subset of ``{"subject", "guardian", "operator", "auditor"}``;
            ``guardian`` is present while the user has at least one active guardian link.
        subject_id: the consent subject this user is (None for operators and auditors).
    """

    user_id: str
    email: str
    roles: frozenset[str]
    subject_id: str | None

    def has(self, role: str) -> bool:
        """True when the user holds ``role``."""
        return role in self.roles


class RateLimiter:
    """At most ``limit`` events per ``window_s`` seconds per key (sliding window).

    Thread-safe and kept in this process's memory: several server processes each count
    on their own (put a shared limiter behind the same two methods to change that).

    Args:
        limit: events allowed in any window.
        window_s: the window, in seconds.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 1 and a positive window")
        self.limit = limit
        self.window_s = float(window_s)
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may act again (0 when it may now); records nothing."""
        with self._lock:
            return self._wait(key, self._clock())

    def _wait(self, key: str, now: float) -> float:
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and now - hits[0] >= self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return 0.0
        return 0.0 if len(hits) < self.limit else hits[0] + self.window_s - now

    def hit(self, key: str, what: str = "requests") -> None:
        """Count one event for ``key``.

        Raises:
            PortalError: 429 with ``Retry-After`` when the limit is reached (the event
                is not counted); the caller must stop and return it.
        """
        with self._lock:
            now = self._clock()
            wait = self._wait(key, now)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                raise PortalError(
                    429,
                    f"too many {what}; try again in {seconds} seconds",
                    {"Retry-After": str(seconds)},
                )
            self._hits.setdefault(key, deque()).append(now)


# ---- secrets -----------------------------------------------------------------------------


def new_token() -> str:
    """A new random session or CSRF token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The sha256 hex under which a session token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def hash_password(password: str) -> str:
    """The argon2id hash to store for ``password`` (blocking, ~0.1 s: use a thread)."""
    return _HASHER.hash(password)


def check_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; takes as long when ``stored`` is None."""
    try:
        return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with weaker parameters than today's."""
    return _HASHER.check_needs_rehash(stored)


# ---- origins -----------------------------------------------------------------------------


def context_of(request: Request) -> PortalContext:
    """The portal context of this request.

    Raises:
        PortalError: 503 while the server is still starting (the store is not open yet).
    """
    ctx = request.scope.get(SCOPE_KEY)
    if ctx is None:
        raise PortalError(503, "the consent portal is starting; try again in a moment")
    return ctx


def expected_origin(request: Request) -> str:
    """The portal's origin: ``portal.origin`` when set, else this request's scheme and host."""
    configured = context_of(request).settings.portal.origin
    if configured:
        return configured.rstrip("/")
    host = request.headers.get("host") or "localhost"
    return f"{request.url.scheme}://{host}"


def relying_party(request: Request) -> tuple[str, str]:
    """(rp id, origin) for WebAuthn.

    Raises:
        PortalError: 400 when the portal is opened by IP address (passkeys need a name).
    """
    origin = expected_origin(request)
    rp_id = context_of(request).settings.portal.rp_id or (urlsplit(origin).hostname or "")
    if not rp_id or rp_id.replace(".", "").isdigit() or ":" in rp_id:
        raise PortalError(
            400,
            "passkeys need a domain name: open the portal at http://localhost:PORT "
            "(not an IP address) or set portal.rp_id",
        )
    return rp_id, origin


def check_origin(request: Request) -> None:
    """Refuse a state-changing request sent from another site.

    Raises:
        PortalError: 403 when ``Origin`` is present and not the portal's, or when the
            browser says the request is cross-site (``Sec-Fetch-Site``).
    """
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != expected_origin(request):
        raise PortalError(403, "this request came from another site and was refused")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise PortalError(403, "this request came from another site and was refused")


def check_json_request(request: Request) -> None:
    """The CSRF guard of routes used before signing in: JSON from the portal's origin.

    Raises:
        PortalError: 403 unless the body is declared ``application/json`` and the origin
            (when sent) is the portal's.
    """
    check_origin(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise PortalError(403, "send this request from the portal page, as JSON")


# ---- the signed-in user ----------------------------------------------------------------


async def require_user(request: Request) -> Principal:
    """The signed-in user of this request (looked up once per request).

    Raises:
        PortalError: 401 when there is no valid, unexpired session; the page must send
            the person to the sign-in page.
    """
    cached = request.scope.get("likeness.principal")
    if cached is not None:
        return cached[0]
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 200:
        raise PortalError(401, "please sign in")
    from consent.portal.accounts import session_principal

    ctx = context_of(request)
    found = await run_in_threadpool(session_principal, ctx.store.engine, token_hash(token))
    if found is None:
        raise PortalError(401, "your sign-in has expired; please sign in again")
    request.scope["likeness.principal"] = found
    return found[0]


async def require_csrf(request: Request) -> None:
    """Check the CSRF token (and origin) of a state-changing request.

    Call after :func:`require_user`.

    Raises:
        PortalError: 401 when not signed in; 403 when the ``X-CSRF-Token`` header does
            not match the session's token or the request came from another site.
    """
    await require_user(request)
    check_origin(request)
    _principal, csrf = request.scope["likeness.principal"]
    if not same_secret(request.headers.get(CSRF_HEADER), csrf):
        raise PortalError(403, "the page's security token is missing or stale; reload the page")


def csrf_token(request: Request) -> str:
    """The CSRF token of the signed-in session (after :func:`require_user`)."""
    return request.scope["likeness.principal"][1]


def can_act_for(principal: Principal, subject_id: str | None, store: ConsentStore) -> bool:
    """True when ``principal`` may see and act on ``subject_id``'s grants and data.

    That is the subject themself, or a guardian with an active link to them. Operators
    and auditors never act for a subject (unless linked, which the portal refuses).
    Blocking when a guardian link must be looked up: call from a worker thread.
    """
    if not subject_id:
        return False
    if principal.subject_id == subject_id:
        return True
    if not principal.has("guardian"):
        return False
    from consent.portal.accounts import guardian_subjects

    return subject_id in guardian_subjects(store.engine, principal.user_id)


def require_role(principal: Principal, role: str, what: str) -> None:
    """Refuse unless ``principal`` holds ``role``.

    Raises:
        PortalError: 403 naming what needs the role.
    """
    if not principal.has(role):
        article = "an" if role[0] in "aeiou" else "a"
        raise PortalError(403, f"only {article} {role} may {what}")


def client_address(request: Request) -> str:
    """The client's address (the proxy's, behind a proxy) for per-address limits."""
    return request.client.host if request.client else "unknown"


def session_cookie(response: Any, token: str, *, hours: float, secure: bool) -> None:
    """Set the session cookie: HttpOnly, SameSite=Strict, Path=/, Secure when asked."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(hours * 3600),
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Any, *, secure: bool) -> None:
    """Tell the browser to forget the session cookie."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="strict"
    )


__all__ = [
    "ALL_ROLES",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "STATE_CHANGING",
    "PortalError",
    "Principal",
    "RateLimiter",
    "can_act_for",
    "check_json_request",
    "check_origin",
    "check_password",
    "client_address",
    "context_of",
    "csrf_token",
    "expected_origin",
    "hash_password",
    "relying_party",
    "require_csrf",
    "require_role",
    "require_user",
]
