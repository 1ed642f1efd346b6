"""``likeness serve``: one ASGI app for the web pages, WebRTC signaling, health and metrics.

Routes::

    WS   /api/rtc/ws      the same offer/answer as JSON messages, then trickle ICE candidates
    POST /api/rtc/offer   {"sdp", "type": "offer", "avatar"?, "deployment"?, "profile"?}
                          → 200 {"sdp", "type": "answer", "session_id"} (all ICE candidates
                          inside: one POST connects); 400 bad SDP, 403 no consent for
                          this face (or voice) here, 404 unknown avatar, 503 busy
                          (Retry-After) or, for a real face, the node's revocation
                          channel is down (consent.blind_after_s)
    POST /api/rtc/ice     {"iceServers", "iceTransportPolicy", "expires_at"} for the next
                          RTCPeerConnection, TURN credentials minted for it; 503 while
                          not ready or busy, 429 over server.ice_per_minute per address
    GET  /api/config      persona name and the kiosk profile for the pages
    *    /api/consent/... the consent portal's JSON API (consent/portal; 401 unsigned)
    GET  /health          200 {"status": "ready", ...} once the models are loaded (on
                          PostgreSQL also "revocation_channel": the epoch feed's state)
    GET  /health/room     the same body plus "room"; 200 only while ready with a session
                          free, else 503: a load balancer's health check (deploy/haproxy.cfg)
    GET  /metrics         Prometheus text
    GET  /                the chat page; /kiosk.html the kiosk; /portal/ the consent
                          portal (web/static)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from consent.portal import for_gate
from consent.portal import mount as portal_mount
from consent.portal.auth import PortalError, RateLimiter
from runtime.companion import Companion, OfferError
from runtime.config import Settings
from runtime.errors import ConfigError
from runtime.logs import get_logger
from runtime.turn import IceProvider
from web import STATIC_DIR

__all__ = ["Companion", "OfferError", "create_app"]

MAX_BODY = 64 * 1024
log = get_logger("likeness.server")


def create_app(settings: Settings) -> Starlette:
    """The ASGI app. Models load at start-up; /health says when it is ready."""
    companion = Companion(settings)
    started = time.time()
    ice = IceProvider.from_config(settings.server)  # a TURN URL without a secret fails here
    for note in ice.aiortc_notes():
        log.warning(note)
    ice_limiter = RateLimiter(settings.server.ice_per_minute, 60.0)

    def current_ice() -> IceProvider:
        """The ICE servers as configured now: a rotated ``turn_secret_file`` counts from
        the next connection. 503 when the secret cannot be read."""
        try:
            return IceProvider.from_config(settings.server)
        except ConfigError as err:
            log.error("cannot mint ICE credentials", error=str(err))
            raise PortalError(503, "ICE servers unavailable") from None

    async def offer(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return JSONResponse({"error": "offer too large"}, status_code=413)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            return JSONResponse(await companion.offer(body))
        except OfferError as err:
            return JSONResponse({"error": str(err)}, err.status, headers=err.headers)

    async def signaling(socket: WebSocket) -> None:
        """The same offer/answer over a WebSocket, plus trickle ICE from the client:
        ``{"type": "offer", ...}`` → ``{"type": "answer", "sdp", "session_id"}``, then
        ``{"type": "candidate", "candidate", "sdpMid", "sdpMLineIndex"}`` messages.
        Errors come back as ``{"type": "error", "status", "error"}``; closing the socket
        does not end the session (the data channel and the media do)."""
        await socket.accept()
        session_id: str | None = None
        try:
            while True:
                try:
                    message = json.loads(await socket.receive_text())
                    if not isinstance(message, dict):
                        raise ValueError
                except ValueError:
                    await socket.send_json({"type": "error", "status": 400, "error": "not JSON"})
                    continue
                try:
                    if message.get("type") == "offer":
                        answer = await companion.offer(message)
                        session_id = answer["session_id"]
                        await socket.send_json(answer)
                    elif message.get("type") == "candidate" and session_id is not None:
                        await companion.add_candidate(session_id, message)
                    else:
                        raise OfferError(400, "expected an offer, then candidates")
                except OfferError as err:
                    await socket.send_json(
                        {"type": "error", "status": err.status, "error": str(err)}
                    )
        except WebSocketDisconnect:
            return

    async def rtc_ice(request: Request) -> Response:
        """ICE servers for the page's next peer connection, with fresh TURN credentials.

        TURN credentials are a relay's bandwidth: they go only to a client that could
        start a session now (server ready, a session free), at most
        ``server.ice_per_minute`` per client address, and expire after
        ``server.turn_ttl_s``. The relay itself must only relay to the session nodes
        (coturn ``allowed-peer-ip``; docs/deployment.md), so a credential lets nobody
        reach anything they could not reach by opening a session.
        """
        if companion.models is None:
            return JSONResponse({"error": "not ready yet"}, 503, headers={"Retry-After": "2"})
        if len(companion.sessions) >= settings.server.max_sessions:
            busy = {"error": "busy: all sessions are taken"}
            return JSONResponse(busy, 503, headers={"Retry-After": "10"})
        try:
            ice_limiter.hit(request.client.host if request.client else "-", "ICE requests")
            page = current_ice().for_page()
        except PortalError as err:
            return JSONResponse({"error": str(err)}, err.status, headers=err.headers)
        return JSONResponse(page, headers={"Cache-Control": "no-store"})

    def health_body() -> dict:
        body = {
            "status": "ready" if companion.models is not None else "loading",
            "sessions": len(companion.sessions),
            "max_sessions": settings.server.max_sessions,
            "uptime_s": round(time.time() - started, 1),
            "tasks": len(asyncio.all_tasks()),
        }
        feed = companion.gate.feed if companion.gate is not None else None
        if feed is not None:  # PostgreSQL: is this node still hearing of revokes?
            body["revocation_channel"] = feed.health()
        return body

    async def health(_: Request) -> Response:
        body = health_body()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    async def health_room(_: Request) -> Response:
        """Whether this node can take one more session now: 200 while it is ready and a
        session is free, 503 while it loads or is full. A balancer checks this route and
        sends new offers elsewhere while it fails; plain ``/health`` stays 200 on a full
        node (the node is alive, only busy)."""
        body = health_body()
        body["room"] = body["status"] == "ready" and body["sessions"] < body["max_sessions"]
        return JSONResponse(body, status_code=200 if body["room"] else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(companion.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def config(request: Request) -> Response:
        try:
            k = companion.profile(request.query_params.get("profile")) or settings.kiosk
        except OfferError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return JSONResponse(
            {
                "persona": {"name": k.persona_name or settings.persona.name},
                "kiosk": {
                    "avatar": k.avatar,
                    "volume": k.volume,
                    "slow_speech": k.slow_speech,
                    "caption_scale": k.caption_scale,
                },
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        await companion.load()
        yield
        await companion.shutdown()

    app = Starlette(
        routes=[
            Route("/api/rtc/offer", offer, methods=["POST"]),
            WebSocketRoute("/api/rtc/ws", signaling),
            Route("/api/rtc/ice", rtc_ice, methods=["POST"]),
            Route("/api/config", config),
            Route("/health", health),
            Route("/health/room", health_room),
            Route("/metrics", metrics),
            # /api/consent; the enrolment ceremony's two peers get the same ICE servers
            portal_mount(for_gate(settings, lambda: companion.gate, current_ice)),
            Mount("/", StaticFiles(directory=STATIC_DIR, html=True)),
        ],
        lifespan=lifespan,
    )
    app.state.companion = companion
    return app
