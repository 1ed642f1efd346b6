"""Portal routes for operators, auditors and enrolment (under ``/api/consent/``).

::

    GET    deployments                 operator: every deployment and its allowed avatars
    POST   deployments                 operator: {name, description, avatars} → 201
    PUT    deployments/{name}          operator: {description, avatars}
    DELETE deployments/{name}          operator
    GET    avatars                     operator: avatars with a live grant and its scope
    GET    audit[?after=&limit=]       auditor: audit entries in seq order
    GET    audit/verify                auditor: is the hash chain intact?
    POST   enrol/photo[?subject=]      the photo bytes → {avatar_id, faces}
    POST   enrol/challenge[?subject=]  {avatar_id} → a challenge (429 when too many)
    GET    enrol/challenge[?subject=]  the newest pending challenge, or 404
    POST   enrol/ice[?subject=]        → {iceServers, iceTransportPolicy, expires_at}: the
                                       page's peer configuration, TURN credentials fresh
    POST   enrol/ceremony[?subject=]   {avatar_id, sdp, type: "offer"} → {sdp, type: "answer",
                                       ceremony_id}: the live ceremony (consent/ceremony/live.py)
    POST   enrol/clip?nonce=&started_at=[&subject=]  the clip bytes → {passed, points, ...}:
                                       an operator's re-check, never a grant's ground

Enrolment runs ``consent.enrolment.Enrolment`` (loaded on first use, in a thread).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from consent.audit import verify_chain
from consent.grants import format_time
from consent.models import AuditRow, State
from consent.portal import deployments
from consent.portal.api import acting_for, actor
from consent.portal.auth import PortalError, Principal, require_role
from consent.portal.http import RouteSpec, api, body_bytes, json_body, ok, thread

TABLE: list[RouteSpec] = []
MAX_PHOTO = 10 * 1024 * 1024
MAX_CLIP = 60 * 1024 * 1024
AUDIT_PAGE = 500


# ---- operators ----------------------------------------------------------------------------


@api(TABLE, "GET", "/deployments")
async def deployment_list(request: Request, ctx: Any, who: Principal) -> Response:
    """Every registered deployment with its allowed avatars."""
    require_role(who, "operator", "manage deployments")
    found = await thread(deployments.list_deployments, ctx.store)
    return ok({"deployments": [d.to_json() for d in found]})


@api(TABLE, "POST", "/deployments")
async def deployment_create(request: Request, ctx: Any, who: Principal) -> Response:
    """Register a deployment."""
    require_role(who, "operator", "manage deployments")
    body = await json_body(request)
    info = await thread(
        deployments.save_deployment,
        ctx.store,
        name=body.get("name"),
        description=body.get("description", ""),
        avatars=body.get("avatars", []),
        by=actor(who),
        create=True,
    )
    return ok({"deployment": info.to_json()}, 201)


@api(TABLE, "PUT", "/deployments/{name}")
async def deployment_update(request: Request, ctx: Any, who: Principal) -> Response:
    """Replace a deployment's description and allowed avatars."""
    require_role(who, "operator", "manage deployments")
    body = await json_body(request)
    info = await thread(
        deployments.save_deployment,
        ctx.store,
        name=request.path_params["name"],
        description=body.get("description", ""),
        avatars=body.get("avatars", []),
        by=actor(who),
        create=False,
    )
    return ok({"deployment": info.to_json()})


@api(TABLE, "DELETE", "/deployments/{name}")
async def deployment_delete(request: Request, ctx: Any, who: Principal) -> Response:
    """Remove a deployment."""
    require_role(who, "operator", "manage deployments")
    await thread(
        deployments.delete_deployment, ctx.store, request.path_params["name"], by=actor(who)
    )
    return ok({"deleted": True})


def _live_avatars(ctx: Any) -> list[dict[str, Any]]:
    from consent.store import utcnow

    now = utcnow()
    found: dict[str, dict[str, Any]] = {}
    for record in ctx.store.all_grants():
        g = record.grant
        if record.revoked or g.expires_at <= now or not g.allow_face:
            continue
        entry = found.setdefault(
            g.avatar_id,
            {"avatar_id": g.avatar_id, "deployments": set(), "purposes": set(), "expires_at": None},
        )
        entry["deployments"].update(g.deployments)
        entry["purposes"].update(g.purposes)
        if entry["expires_at"] is None or g.expires_at > entry["expires_at"]:
            entry["expires_at"] = g.expires_at
    return [
        {
            "avatar_id": e["avatar_id"],
            "deployments": sorted(e["deployments"]),
            "purposes": sorted(e["purposes"]),
            "expires_at": format_time(e["expires_at"]),
        }
        for e in sorted(found.values(), key=lambda e: e["avatar_id"])
    ]


@api(TABLE, "GET", "/avatars")
async def live_avatars(request: Request, ctx: Any, who: Principal) -> Response:
    """Avatars with a live grant (ids and grant scope only; no names, no photos)."""
    require_role(who, "operator", "list avatars for deployments")
    return ok({"avatars": await thread(_live_avatars, ctx)})


# ---- auditors -----------------------------------------------------------------------------


def _audit_page(ctx: Any, after: int, limit: int) -> dict[str, Any]:
    with Session(ctx.store.engine) as s:
        rows = s.execute(
            select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit)
        ).scalars()
        entries = [
            {
                "seq": r.seq,
                "at": format_time(r.at),
                "actor": r.actor,
                "action": r.action,
                "subject": r.subject_id,
                "details": json.loads(r.details),
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in rows
        ]
        state = s.execute(select(State).where(State.id == 1)).scalar_one()
        return {"entries": entries, "head_seq": state.audit_seq, "head_hash": state.audit_hash}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise PortalError(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


@api(TABLE, "GET", "/audit")
async def audit(request: Request, ctx: Any, who: Principal) -> Response:
    """Audit entries after ``after`` (a seq), at most ``limit`` of them."""
    require_role(who, "auditor", "read the audit log")
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, AUDIT_PAGE)
    return ok(await thread(_audit_page, ctx, after, limit))


@api(TABLE, "GET", "/audit/verify")
async def audit_verify(request: Request, ctx: Any, who: Principal) -> Response:
    """Check the whole hash chain; every break is listed in plain words."""
    require_role(who, "auditor", "verify the audit log")
    problems = await thread(verify_chain, ctx.store)
    return ok(
        {
            "intact": not problems,
            "problems": [{"seq": p.seq, "kind": p.kind, "message": p.message} for p in problems],
        }
    )


# ---- enrolment ----------------------------------------------------------------------------


async def _enrol_target(request: Request, ctx: Any, who: Principal) -> str:
    return await acting_for(ctx, who, request.query_params.get("subject") or who.subject_id)


@api(TABLE, "POST", "/enrol/photo")
async def enrol_photo(request: Request, ctx: Any, who: Principal) -> Response:
    """Check an uploaded photo (exactly one face) and record it for the person."""
    subject_id = await _enrol_target(request, ctx, who)
    photo = await body_bytes(request, MAX_PHOTO, "photo")
    service = await ctx.enrolment_service()
    avatar_id = await thread(service.add_photo, subject_id, photo)
    return ok({"avatar_id": avatar_id, "faces": 1})


@api(TABLE, "POST", "/enrol/challenge")
async def enrol_challenge(request: Request, ctx: Any, who: Principal) -> Response:
    """Issue a liveness challenge for one of the person's photos."""
    subject_id = await _enrol_target(request, ctx, who)
    body = await json_body(request)
    avatar_id = body.get("avatar_id")
    if not isinstance(avatar_id, str) or not avatar_id:
        raise PortalError(422, "avatar_id must be the id of your uploaded photo")
    ctx.challenge_limiter.hit(f"enrol:{who.user_id}", "checks started")
    service = await ctx.enrolment_service()
    found = await thread(service.challenge, subject_id, avatar_id, time.time())
    return ok(found.to_json())


@api(TABLE, "GET", "/enrol/challenge")
async def enrol_pending(request: Request, ctx: Any, who: Principal) -> Response:
    """The person's newest unused, unexpired challenge (to resume it)."""
    subject_id = await _enrol_target(request, ctx, who)
    service = await ctx.enrolment_service()
    found = await thread(service.pending, subject_id, time.time())
    if found is None:
        raise PortalError(404, "no check is waiting; start a new one")
    return ok(found.to_json())


@api(TABLE, "POST", "/enrol/ice")
async def enrol_ice(request: Request, ctx: Any, who: Principal) -> Response:
    """The page's ICE servers for its next ceremony: behind a home NAT the camera's
    media reaches the server only through the TURN relay, as a session's does.

    TURN credentials are a relay's bandwidth: only for a person who may enrol the
    subject, counted with the checks they start (``portal.challenges_per_hour``), and
    expiring after ``server.turn_ttl_s``.
    """
    await _enrol_target(request, ctx, who)
    ctx.challenge_limiter.hit(f"enrol-ice:{who.user_id}", "connections asked for")
    return ok(ctx.ice().for_page(), headers={"Cache-Control": "no-store"})


@api(TABLE, "POST", "/enrol/ceremony")
async def enrol_ceremony(request: Request, ctx: Any, who: Principal) -> Response:
    """Start the live ceremony: the page's WebRTC offer in, the server's answer out.

    Prompts, acknowledgements and the result then travel on the offer's data channel
    "ceremony" (``consent.ceremony.live``); a passed result's ``liveness_id`` goes into
    the grant request.
    """
    subject_id = await _enrol_target(request, ctx, who)
    body = await json_body(request)
    avatar_id = body.get("avatar_id")
    if not isinstance(avatar_id, str) or not avatar_id:
        raise PortalError(422, "avatar_id must be the id of your uploaded photo")
    if body.get("type") != "offer":
        raise PortalError(400, "expected a WebRTC offer: {'type': 'offer', 'sdp': 'v=0...'}")
    from consent.ceremony import live

    try:
        live.check_offer(body.get("sdp"))
    except ValueError as err:
        raise PortalError(400, str(err)) from None
    ctx.challenge_limiter.hit(f"enrol:{who.user_id}", "checks started")
    ice_servers = ctx.ice().aiortc_servers()  # before the ceremony opens: it may 503
    service = await ctx.enrolment_service()
    opened = await thread(service.open_ceremony, subject_id, avatar_id, time.time())
    try:
        answer, _running = await live.start(opened, body["sdp"], ice_servers)
    except ValueError as err:
        raise PortalError(400, str(err)) from None
    return ok({"sdp": answer.sdp, "type": answer.type, "ceremony_id": opened.id})


@api(TABLE, "POST", "/enrol/clip")
async def enrol_clip(request: Request, ctx: Any, who: Principal) -> Response:
    """Check an uploaded clip against its challenge, for review: every point says why,
    and a failed "live" point keeps any grant from resting on it."""
    subject_id = await _enrol_target(request, ctx, who)
    nonce = request.query_params.get("nonce", "")
    try:
        started_at = float(request.query_params.get("started_at", "nan"))
    except ValueError:
        started_at = math.nan
    if not nonce or not math.isfinite(started_at):
        raise PortalError(400, "nonce and started_at (unix seconds) are needed; record again")
    clip = await body_bytes(request, MAX_CLIP, "clip")
    service = await ctx.enrolment_service()
    result, record = await thread(service.submit, subject_id, nonce, clip, started_at, time.time())
    from consent.enrolment import result_json

    return ok(result_json(result, record))


__all__ = ["TABLE"]
