"""The portal's JSON API under ``/api/consent/``: sign-in, the person's own pages.

Routes (``*`` = usable before signing in; every other route answers 401 without a
session, and 403 without the CSRF header when it changes state)::

    POST   auth/signup*                 {email, password, display_name} → 201, cookie
    POST   auth/signin*                 {email, password} → 200, cookie (429 when too many)
    POST   auth/passkey/signin/begin*   {email?} → {challenge_id, options}
    POST   auth/passkey/signin/finish*  {challenge_id, credential} → 200, cookie
    GET    auth/me                      {user, csrf_token}
    POST   auth/signout                 ends the session
    POST   auth/passkey/register/begin  → {challenge_id, options}
    POST   auth/passkey/register/finish {challenge_id, credential, name?} → 201
    GET    auth/passkeys                the user's passkeys
    DELETE auth/passkeys/{passkey_id}
    GET    subjects                     the people the user may act for (operators: all)
    GET    grants[?subject=]            grants with status and where/when used
    POST   grants                       {avatar_id, liveness_id?, allow_voice, deployments,
                                         purposes, expires_days, basis?, subject?} → 201
    GET    grants/{grant_id}
    POST   grants/{grant_id}/revoke     {confirm: true, reason?}
    GET    subjects/{subject_id}/usage
    GET    subjects/{subject_id}/export download my data (JSON)
    POST   subjects/{subject_id}/delete {confirm: "delete"}
    GET    guardians                    links the user is part of (operators: all)
    POST   guardians                    {email, subject?, basis?}
    DELETE guardians/{link_id}

Operator, auditor and enrolment routes are in ``consent.portal.api_admin``. Another
person's ids answer 404, exactly like ids that do not exist.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consent.errors import NotFoundError
from consent.models import Subject
from consent.portal import accounts, data, passkeys
from consent.portal.auth import (
    SESSION_COOKIE,
    PortalError,
    Principal,
    can_act_for,
    clear_session_cookie,
    client_address,
    csrf_token,
    relying_party,
    session_cookie,
    token_hash,
)
from consent.portal.http import RouteSpec, api, json_body, ok, routes_of, thread
from consent.store import utcnow

TABLE: list[RouteSpec] = []
NOT_YOURS = "no person with that id that you may act for"
NO_GRANT = "no grant with that id"


def actor(who: Principal, subject_id: str | None = None) -> str:
    """How ``who`` is named in the audit log when acting (for ``subject_id``)."""
    if subject_id is not None and who.subject_id == subject_id:
        return f"subject:{who.user_id}"
    if subject_id is not None and who.has("guardian"):
        return f"guardian:{who.user_id}"
    for role in ("operator", "auditor", "subject"):
        if who.has(role):
            return f"{role}:{who.user_id}"
    return f"user:{who.user_id}"


async def acting_for(ctx: Any, who: Principal, subject_id: Any) -> str:
    """``subject_id`` when ``who`` may act for that person.

    Raises:
        PortalError: 404 otherwise (the same answer as for an id that does not exist).
    """
    if not isinstance(subject_id, str) or not subject_id:
        raise PortalError(404, NOT_YOURS)
    if not await thread(can_act_for, who, subject_id, ctx.store):
        raise PortalError(404, NOT_YOURS)
    return subject_id


async def _signed_in(
    request: Request, ctx: Any, user: accounts.UserInfo, method: str, status: int
) -> Response:
    """Start a session (ending the one this browser had, if any) and set its cookie."""
    cfg = ctx.settings.portal
    engine, hours = ctx.store.engine, cfg.session_hours
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:
        await thread(accounts.end_session, engine, token_hash(previous))
    token = await thread(accounts.start_session, engine, user.id, method, hours)
    await thread(
        ctx.store.append_audit,
        f"user:{user.id}",
        "signin",
        user.subject_id,
        {"user_id": user.id, "method": method},
    )
    response = ok({"user": user.to_json()}, status)
    session_cookie(response, token, hours=cfg.session_hours, secure=cfg.cookie_secure)
    return response


# ---- signing in ---------------------------------------------------------------------------


@api(TABLE, "POST", "/auth/signup", public=True)
async def signup(request: Request, ctx: Any) -> Response:
    """Create a person's account (and their consent subject), signed in at once."""
    if not ctx.settings.portal.open_signup:
        raise PortalError(403, "sign-up is closed here; ask the operator for an account")
    ctx.signin_limiter.hit(f"addr:{client_address(request)}", "sign-in attempts")
    body = await json_body(request)
    user = await thread(
        accounts.create_user,
        ctx.store,
        email=body.get("email"),
        display_name=body.get("display_name"),
        role="subject",
        password=body.get("password"),
        actor="signup",
    )
    return await _signed_in(request, ctx, user, "password", 201)


@api(TABLE, "POST", "/auth/signin", public=True)
async def signin(request: Request, ctx: Any) -> Response:
    """Sign in with email and password."""
    ctx.signin_limiter.hit(f"addr:{client_address(request)}", "sign-in attempts")
    body = await json_body(request)
    user = await thread(
        accounts.password_signin, ctx.store.engine, body.get("email"), body.get("password")
    )
    if user is None:
        raise PortalError(401, "wrong email or password")
    return await _signed_in(request, ctx, user, "password", 200)


@api(TABLE, "POST", "/auth/passkey/signin/begin", public=True)
async def passkey_signin_begin(request: Request, ctx: Any) -> Response:
    """Options for signing in with a passkey (with or without an email)."""
    ctx.signin_limiter.hit(f"addr:{client_address(request)}", "sign-in attempts")
    rp_id, _origin = relying_party(request)
    body = await json_body(request)
    options = await thread(
        passkeys.signin_options, ctx.store.engine, rp_id=rp_id, email=body.get("email")
    )
    return ok(options)


@api(TABLE, "POST", "/auth/passkey/signin/finish", public=True)
async def passkey_signin_finish(request: Request, ctx: Any) -> Response:
    """Check the passkey's answer and sign in."""
    ctx.signin_limiter.hit(f"addr:{client_address(request)}", "sign-in attempts")
    rp_id, origin = relying_party(request)
    body = await json_body(request)
    user = await thread(
        passkeys.finish_signin,
        ctx.store,
        challenge_id=body.get("challenge_id"),
        credential=body.get("credential"),
        rp_id=rp_id,
        origin=origin,
    )
    return await _signed_in(request, ctx, user, "passkey", 200)


@api(TABLE, "GET", "/auth/me")
async def me(request: Request, ctx: Any, who: Principal) -> Response:
    """The signed-in user and the CSRF token every state-changing request must send."""
    user = await thread(accounts.user_by_id, ctx.store.engine, who.user_id)
    assert user is not None
    return ok(
        {
            "user": user.to_json() | {"roles": sorted(who.roles)},
            "csrf_token": csrf_token(request),
        }
    )


@api(TABLE, "POST", "/auth/signout")
async def signout(request: Request, ctx: Any, who: Principal) -> Response:
    """End this session."""
    token = request.cookies.get(SESSION_COOKIE, "")
    await thread(accounts.end_session, ctx.store.engine, token_hash(token))
    response = ok({"signed_out": True})
    clear_session_cookie(response, secure=ctx.settings.portal.cookie_secure)
    return response


@api(TABLE, "POST", "/auth/passkey/register/begin")
async def passkey_register_begin(request: Request, ctx: Any, who: Principal) -> Response:
    """Options for adding a passkey to the signed-in account."""
    ctx.challenge_limiter.hit(f"passkey:{who.user_id}", "passkey requests")
    rp_id, _origin = relying_party(request)
    user = await thread(accounts.user_by_id, ctx.store.engine, who.user_id)
    options = await thread(
        passkeys.registration_options,
        ctx.store.engine,
        user,
        rp_id=rp_id,
        rp_name=ctx.settings.portal.rp_name,
    )
    return ok(options)


@api(TABLE, "POST", "/auth/passkey/register/finish")
async def passkey_register_finish(request: Request, ctx: Any, who: Principal) -> Response:
    """Keep the new passkey the browser made."""
    rp_id, origin = relying_party(request)
    body = await json_body(request)
    user = await thread(accounts.user_by_id, ctx.store.engine, who.user_id)
    info = await thread(
        passkeys.finish_registration,
        ctx.store,
        user,
        challenge_id=body.get("challenge_id"),
        credential=body.get("credential"),
        name=body.get("name"),
        rp_id=rp_id,
        origin=origin,
    )
    return ok({"passkey": info.to_json()}, 201)


@api(TABLE, "GET", "/auth/passkeys")
async def passkey_list(request: Request, ctx: Any, who: Principal) -> Response:
    """The signed-in user's passkeys."""
    found = await thread(passkeys.passkeys_of, ctx.store.engine, who.user_id)
    return ok({"passkeys": [p.to_json() for p in found]})


@api(TABLE, "DELETE", "/auth/passkeys/{passkey_id}")
async def passkey_remove(request: Request, ctx: Any, who: Principal) -> Response:
    """Remove one of the user's own passkeys."""
    await thread(
        passkeys.remove_passkey, ctx.store.engine, who.user_id, request.path_params["passkey_id"]
    )
    return ok({"removed": True})


# ---- people and grants --------------------------------------------------------------------


def _subjects(ctx: Any, who: Principal) -> list[dict[str, Any]]:
    with Session(ctx.store.engine) as s:
        if who.has("operator"):
            rows = s.execute(select(Subject).order_by(Subject.created_at)).scalars()
            return [{"id": r.id, "display_name": r.display_name, "relation": None} for r in rows]
        ids = accounts.guardian_subjects(ctx.store.engine, who.user_id)
        if who.subject_id:
            ids.add(who.subject_id)
        rows = s.execute(select(Subject).where(Subject.id.in_(sorted(ids)))).scalars()
        return [
            {
                "id": r.id,
                "display_name": r.display_name,
                "relation": "self" if r.id == who.subject_id else "guardian",
            }
            for r in sorted(rows, key=lambda r: (r.id != who.subject_id, r.display_name))
        ]


@api(TABLE, "GET", "/subjects")
async def subjects(request: Request, ctx: Any, who: Principal) -> Response:
    """The people the user may act for (themself first); operators see every person."""
    if who.has("auditor") and not who.subject_id:
        raise PortalError(403, "an auditor reads the audit log only")
    return ok({"subjects": await thread(_subjects, ctx, who)})


@api(TABLE, "GET", "/grants")
async def grants(request: Request, ctx: Any, who: Principal) -> Response:
    """Grants of one person (``?subject=``) or of everyone the user acts for."""
    asked = request.query_params.get("subject")
    if asked is not None:
        ids = [await acting_for(ctx, who, asked)]
    elif not who.subject_id and not who.has("guardian"):
        raise PortalError(403, "operators and auditors do not see people's grants")
    now = utcnow()
    names = {s["id"]: s["display_name"] for s in await thread(_subjects, ctx, who)}
    if asked is None:
        ids = list(names)
    out = []
    for subject_id in ids:
        for g in await thread(data.grants_json, ctx.store, subject_id, now):
            out.append(g | {"subject_name": names.get(subject_id, "")})
    return ok({"grants": out})


def _expiry_days(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
        raise PortalError(422, "expires_days must be a whole number of days from 1 to 3650")
    return value


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 50:
        raise PortalError(422, f"{what} must be a list of 1 to 50 names ('*' for all)")
    for name in value:
        accounts.check_text(name, what[:-1], limit=80)
    return value


@api(TABLE, "POST", "/grants")
async def issue_grant(request: Request, ctx: Any, who: Principal) -> Response:
    """Grant permission to animate one photo (the person's own, or as their guardian)."""
    body = await json_body(request)
    target = body.get("subject") or who.subject_id
    if not isinstance(target, str) or not await thread(can_act_for, who, target, ctx.store):
        if not who.subject_id and not who.has("guardian"):
            raise PortalError(403, "operators and auditors cannot grant consent for anyone")
        raise PortalError(404, NOT_YOURS)
    own = target == who.subject_id
    for flag in ("allow_face", "allow_voice"):
        if not isinstance(body.get(flag, flag == "allow_face"), bool):
            raise PortalError(422, f"{flag} must be true or false")
    basis = body.get("basis")
    if own and basis:
        raise PortalError(422, "a basis is only recorded when a guardian grants")
    if not own:
        if basis is None:
            found = await thread(accounts.links_of, ctx.store.engine, guardian_id=who.user_id)
            basis = next((x.basis for x in found if x.subject_id == target), None)
        basis = accounts.check_text(basis, "basis", limit=accounts.MAX_BASIS)
    avatar_id = body.get("avatar_id")
    if not isinstance(avatar_id, str):
        raise PortalError(422, "avatar_id must be the photo's id")
    liveness_id = body.get("liveness_id")
    if liveness_id is not None and not isinstance(liveness_id, str):
        raise PortalError(422, "liveness_id must be the id of a passed check")
    now = utcnow()
    grant = await thread(
        ctx.store.issue,
        ctx.keys,
        subject_id=target,
        avatar_id=avatar_id,
        deployments=_names(body.get("deployments"), "deployments"),
        purposes=_names(body.get("purposes"), "purposes"),
        expires_at=now + timedelta(days=_expiry_days(body.get("expires_days"))),
        allow_face=body.get("allow_face", True),
        allow_voice=body.get("allow_voice", False),
        granted_by="subject" if own else f"guardian:{who.user_id}",
        basis=None if own else basis,
        liveness_id=liveness_id,
        actor=actor(who, target),
    )
    record = await thread(ctx.store.grant, grant.id)
    return ok({"grant": data.grant_json(record, [], now)}, 201)


async def _own_grant(ctx: Any, who: Principal, grant_id: str):
    try:
        record = await thread(ctx.store.grant, grant_id)
    except NotFoundError:
        raise PortalError(404, NO_GRANT) from None
    if not await thread(can_act_for, who, record.grant.subject, ctx.store):
        raise PortalError(404, NO_GRANT)
    return record


@api(TABLE, "GET", "/grants/{grant_id}")
async def grant_detail(request: Request, ctx: Any, who: Principal) -> Response:
    """One grant with its status and where and when it was used."""
    record = await _own_grant(ctx, who, request.path_params["grant_id"])
    items = await thread(data.uses, ctx.store, record.grant.subject)
    return ok({"grant": data.grant_json(record, items, utcnow())})


@api(TABLE, "POST", "/grants/{grant_id}/revoke")
async def revoke_grant(request: Request, ctx: Any, who: Principal) -> Response:
    """Revoke a grant for good (live sessions on it end within a second)."""
    record = await _own_grant(ctx, who, request.path_params["grant_id"])
    body = await json_body(request)
    if body.get("confirm") is not True:
        raise PortalError(400, "confirm the revoke: it cannot be undone (send confirm: true)")
    reason = accounts.check_text(body.get("reason"), "reason", limit=500, required=False)
    subject_id = record.grant.subject
    info = await thread(
        ctx.store.revoke,
        record.grant.id,
        by=actor(who, subject_id),
        reason=reason or "revoked in the consent portal",
    )
    record = await thread(ctx.store.grant, record.grant.id)
    items = await thread(data.uses, ctx.store, subject_id)
    return ok(
        {
            "grant": data.grant_json(record, items, utcnow()),
            "epoch": info.epoch,
            "data_deleted": info.shredded,
        }
    )


# ---- a person's data ----------------------------------------------------------------------


@api(TABLE, "GET", "/subjects/{subject_id}/usage")
async def usage(request: Request, ctx: Any, who: Principal) -> Response:
    """Where and when this person's face was used, with counts."""
    subject_id = await acting_for(ctx, who, request.path_params["subject_id"])
    items = await thread(data.uses, ctx.store, subject_id)
    return ok({"usage": data.usage_summary(items)})


@api(TABLE, "GET", "/subjects/{subject_id}/export")
async def export(request: Request, ctx: Any, who: Principal) -> Response:
    """Download everything stored about this person (JSON)."""
    subject_id = await acting_for(ctx, who, request.path_params["subject_id"])
    body = await thread(data.export, ctx.store, subject_id, by=actor(who, subject_id), now=utcnow())
    disposition = f'attachment; filename="likeness-data-{subject_id[:32]}.json"'
    return ok(body, headers={"Content-Disposition": disposition})


@api(TABLE, "POST", "/subjects/{subject_id}/delete")
async def delete(request: Request, ctx: Any, who: Principal) -> Response:
    """Revoke every live grant and delete this person's face data for good."""
    subject_id = await acting_for(ctx, who, request.path_params["subject_id"])
    body = await json_body(request)
    confirm = body.get("confirm")
    if not isinstance(confirm, str) or confirm.strip().lower() != data.DELETE_WORD:
        raise PortalError(400, f'type "{data.DELETE_WORD}" to confirm: this cannot be undone')
    done = await thread(
        data.delete_data, ctx.store, subject_id, by=actor(who, subject_id), now=utcnow()
    )
    return ok({"deleted": True} | done)


# ---- guardians ----------------------------------------------------------------------------


@api(TABLE, "GET", "/guardians")
async def guardians(request: Request, ctx: Any, who: Principal) -> Response:
    """Guardian links: the user's own guardians and whom they act for (operators: all)."""
    engine = ctx.store.engine
    if who.has("operator"):
        found = await thread(accounts.links_of, engine)
    elif who.subject_id or who.has("guardian"):
        mine = {who.subject_id} if who.subject_id else set()
        found = await thread(accounts.links_of, engine, subject_ids=mine, guardian_id=who.user_id)
    else:
        raise PortalError(403, "an auditor reads the audit log only")
    return ok({"links": [x.to_json() for x in found]})


@api(TABLE, "POST", "/guardians")
async def add_guardian(request: Request, ctx: Any, who: Principal) -> Response:
    """Let another account act for a person: by the person, or by an operator with a basis."""
    body = await json_body(request)
    target = body.get("subject") or who.subject_id
    basis = body.get("basis")
    if who.has("operator"):
        if not isinstance(body.get("subject"), str):
            raise PortalError(422, "name the person (subject) the guardian will act for")
        if not isinstance(basis, str) or not basis.strip():
            raise PortalError(422, "an operator must record the basis (proof of authority)")
    elif target is None or target != who.subject_id:
        raise PortalError(404, NOT_YOURS)
    elif basis is None or (isinstance(basis, str) and not basis.strip()):
        basis = "named by the person in the consent portal"
    info = await thread(
        accounts.link_guardian,
        ctx.store,
        guardian_email=body.get("email"),
        subject_id=target,
        basis=basis,
        by=actor(who, target if target == who.subject_id else None),
    )
    return ok({"link": info.to_json()}, 201)


@api(TABLE, "DELETE", "/guardians/{link_id}")
async def remove_guardian(request: Request, ctx: Any, who: Principal) -> Response:
    """End a guardian link: by the person, the guardian, or an operator."""
    found = await thread(accounts.link, ctx.store.engine, request.path_params["link_id"])
    allowed = found is not None and (
        who.has("operator")
        or (who.subject_id is not None and found.subject_id == who.subject_id)
        or found.guardian_id == who.user_id
    )
    if not allowed or found is None:
        raise PortalError(404, "no active guardian link with that id")
    info = await thread(
        accounts.unlink_guardian, ctx.store, found.id, by=actor(who, found.subject_id)
    )
    return ok({"link": info.to_json()})


def routes() -> list[Route]:
    """Every portal route (these and ``api_admin``'s), relative to ``/api/consent``."""
    from consent.portal import api_admin

    return routes_of([*TABLE, *api_admin.TABLE])


__all__ = ["TABLE", "actor", "acting_for", "routes"]
