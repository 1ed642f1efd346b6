"""The portal's HTTP plumbing: one guarded endpoint wrapper, body readers, JSON errors.

Every portal route is declared with :func:`api` (method, path, ``public``). The wrapper
is where authorization starts, so no route can forget it:

- a route that is not ``public`` answers 401 without a valid session, then (for
  POST/PUT/PATCH/DELETE) 403 without the session's CSRF token or from another origin;
- a ``public`` route (sign-up and sign-in only) that changes state must be JSON from
  the portal's origin (:func:`~consent.portal.auth.check_json_request`).

Errors become ``{"error": "<plain words>"}`` with their status; database details never
reach the client, and only the driver's message is logged (never the bound values:
password hashes, CSRF tokens).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consent import ConsentError
from consent.errors import (
    AlreadyRevokedError,
    GrantError,
    NotFoundError,
    ShreddedError,
    StoreError,
)
from consent.portal.auth import (
    STATE_CHANGING,
    PortalError,
    check_json_request,
    context_of,
    require_csrf,
    require_user,
)

log = structlog.get_logger("likeness.portal")
MAX_JSON = 64 * 1024

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One declared route: ``handler(request, ctx)`` when public, else ``(request, ctx, who)``."""

    method: str
    path: str
    handler: Handler
    public: bool


def api(table: list[RouteSpec], method: str, path: str, *, public: bool = False):
    """Declare ``handler`` as ``method path`` (path relative to ``/api/consent``) in ``table``."""

    def register(handler: Handler) -> Handler:
        table.append(RouteSpec(method.upper(), path, handler, public))
        return handler

    return register


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The portal's error body."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, PortalError):
        return error(exc.status, exc.message, exc.headers)
    status = getattr(exc, "status", None)
    if isinstance(exc, ConsentError) and isinstance(status, int):  # e.g. EnrolmentError
        return error(status, str(exc))
    if isinstance(exc, NotFoundError):
        return error(404, str(exc))
    if isinstance(exc, AlreadyRevokedError):
        return error(409, str(exc))
    if isinstance(exc, ShreddedError):
        return error(410, str(exc))
    if isinstance(exc, GrantError):
        return error(422, str(exc))
    if isinstance(exc, StoreError):
        log.error("portal database error", error=str(exc), retryable=exc.retryable)
        if exc.retryable:
            busy = "the database is busy or unavailable; try again"
            return error(503, busy, {"Retry-After": "2"})
        return error(500, "the database refused this request")
    log.error("portal error", error=str(exc))
    return error(400, str(exc))


def endpoint(spec: RouteSpec) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``spec``: authorization first, then the handler."""

    async def run(request: Request) -> Response:
        try:
            ctx = context_of(request)
            if spec.public:
                if spec.method in STATE_CHANGING:
                    check_json_request(request)
                return await spec.handler(request, ctx)
            who = await require_user(request)
            if spec.method in STATE_CHANGING:
                await require_csrf(request)
            return await spec.handler(request, ctx, who)
        except ConsentError as exc:
            return _from_exception(exc)
        except SQLAlchemyError as exc:  # the portal's own queries; never log bound values
            orig = getattr(exc, "orig", None)
            log.error("portal database error", error=type(exc).__name__, detail=str(orig or ""))
            if isinstance(exc, OperationalError) or getattr(exc, "connection_invalidated", False):
                busy = "the database is busy or unavailable; try again"
                return error(503, busy, {"Retry-After": "2"})
            return error(500, "the database refused this request")

    run.__name__ = spec.handler.__name__
    run.__doc__ = spec.handler.__doc__
    run.portal_public = spec.public  # type: ignore[attr-defined]
    return run


def routes_of(table: list[RouteSpec]) -> list[Route]:
    """Starlette routes for a table of specs (one route per method and path)."""
    return [
        Route(s.path, endpoint(s), methods=[s.method], name=f"portal.{s.handler.__name__}")
        for s in table
    ]


async def body_bytes(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused when larger than ``limit`` bytes.

    Raises:
        PortalError: 413 naming ``what`` and the limit.
    """
    size_text = f"{limit / 1e6:g} MB" if limit >= 1_000_000 else f"{limit // 1024} KB"
    too_large = PortalError(413, f"the {what} is too large (at most {size_text})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object.

    Raises:
        PortalError: 400 when it is not a JSON object (or larger than 64 KB: 413).
    """
    raw = await body_bytes(request, MAX_JSON, "request")
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        raise PortalError(400, "the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise PortalError(400, "the body must be a JSON object")
    return value


async def thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking work (database, argon2, models) in a worker thread."""
    return await run_in_threadpool(fn, *args, **kwargs)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON answer."""
    return JSONResponse(body, status_code=status, headers=headers)


__all__ = [
    "MAX_JSON",
    "RouteSpec",
    "api",
    "body_bytes",
    "endpoint",
    "error",
    "json_body",
    "ok",
    "routes_of",
    "thread",
]
