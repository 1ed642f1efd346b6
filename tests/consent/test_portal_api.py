"""The portal's JSON API through the real app on a real SQLite store: people, guardians,
operators, auditors, sessions, CSRF, limits, injection payloads, export and deletion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session

from consent.audit import verify_chain
from consent.errors import ShreddedError
from consent.gate import ConsentGate
from consent.keys import SigningKeys
from consent.models import AuditRow, Base, Subject
from consent.portal import accounts, deployment_allows
from consent.portal.auth import RateLimiter, token_hash
from consent.portal.models import Deployment, GuardianLink, PortalSession
from consent.portal.models import User as UserRow
from consent.store import ConsentStore, utcnow
from tests.consent.test_portal_support import (
    PASSWORD,
    Person,
    give_face,
    portal_app,
    settings_for,
    store_grant,
)

PAYLOADS = [
    "'); DROP TABLE grants;--",
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
]


@dataclass
class Portal:
    app: object
    store: ConsentStore
    keys: SigningKeys
    settings: object

    def person(self, email: str, name: str = "A Person") -> Person:
        return Person(self.app).signup(email, name)

    def staff(self, email: str, role: str) -> Person:
        accounts.create_user(
            self.store, email=email, display_name=role, role=role, password=PASSWORD
        )
        return Person(self.app).signin(email)


def make_portal(**portal_settings) -> Portal:
    settings = settings_for(**portal_settings)
    store = ConsentStore.open(settings.data_dir)
    keys = SigningKeys.load(settings.data_dir / "consent" / "signing")
    return Portal(portal_app(store, settings), store, keys, settings)


@pytest.fixture
def portal():
    made = make_portal()
    yield made
    made.store.close()


def grant_body(avatar: str, liveness: str | None = None, **extra) -> dict:
    body = {
        "avatar_id": avatar,
        "allow_voice": False,
        "deployments": ["browser-chat", "kiosk"],
        "purposes": ["companionship"],
        "expires_days": 30,
    }
    if liveness is not None:
        body["liveness_id"] = liveness
    return body | extra


def test_subject_grants_sees_usage_and_revokes(portal):
    ann = portal.person("ann@example.org", "Ann")
    avatar, liveness = give_face(portal.store, ann.subject_id, "ann")
    r = ann.post("/grants", grant_body(avatar))  # no liveness check: refused
    assert r.status_code == 422 and "liveness" in r.json()["error"]
    r = ann.post("/grants", grant_body(avatar, liveness))
    assert r.status_code == 201, r.text
    grant = r.json()["grant"]
    assert grant["granted_by"] == "subject" and grant["status"] == "active"
    assert ann.post("/grants", grant_body(avatar, liveness)).status_code == 422  # used up

    gate = ConsentGate(portal.store, portal.keys)
    assert gate.check(avatar_id=avatar, deployment="kiosk", purpose="companionship").allowed
    for deployment, session in (("kiosk", "s1"), ("kiosk", "s2"), ("browser-chat", "s3")):
        gate.record_use("use_start", avatar_id=avatar, deployment=deployment, session=session)
    gate.record_use("use_start", avatar_id=avatar, deployment="elsewhere", session="s4")

    listed = ann.get("/grants").json()["grants"]
    assert [g["id"] for g in listed] == [grant["id"]]
    usage = listed[0]["usage"]
    assert usage["total"] == 3  # the "elsewhere" use is outside this grant's scope
    assert usage["by_deployment"] == [
        {"deployment": "browser-chat", "count": 1},
        {"deployment": "kiosk", "count": 2},
    ]
    assert ann.get(f"/subjects/{ann.subject_id}/usage").json()["usage"]["total"] == 4

    r = ann.post(f"/grants/{grant['id']}/revoke", {"reason": "changed my mind"})
    assert r.status_code == 400 and "confirm" in r.json()["error"]
    r = ann.post(f"/grants/{grant['id']}/revoke", {"confirm": True, "reason": "changed my mind"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grant"]["status"] == "revoked" and body["data_deleted"] is True
    assert body["grant"]["revocation"]["reason"] == "changed my mind"
    assert portal.store.grant(grant["id"]).revocation.revoked_by == f"subject:{ann.id}"
    assert not gate.check(avatar_id=avatar, deployment="kiosk", purpose="companionship").allowed
    assert ann.post(f"/grants/{grant['id']}/revoke", {"confirm": True}).status_code == 409


def test_guardians_act_for_linked_people_only(portal):
    ann = portal.person("ann@example.org", "Ann")
    carol = portal.person("carol@example.org", "Carol")
    operator = portal.staff("op@example.org", "operator")
    own = store_grant(portal.store, portal.keys, ann.subject_id, "ann")
    avatar, _ = give_face(portal.store, ann.subject_id, "ann 2")

    assert carol.get(f"/grants/{own.id}").status_code == 404
    r = ann.post("/guardians", {"email": "carol@example.org"})
    assert r.status_code == 201, r.text
    link = r.json()["link"]
    assert link["basis"] == "named by the person in the consent portal"
    assert ann.post("/guardians", {"email": "carol@example.org"}).status_code == 409
    assert ann.post("/guardians", {"email": "ann@example.org"}).status_code == 422
    assert ann.post("/guardians", {"email": "op@example.org"}).status_code == 422
    assert ann.post("/guardians", {"email": "nobody@example.org"}).status_code == 404

    assert "guardian" in _roles(carol)
    grants = carol.get("/grants").json()["grants"]
    assert {g["id"] for g in grants} == {own.id}
    assert grants[0]["subject_name"] == "Ann"
    r = carol.post("/grants", grant_body(avatar, subject=ann.subject_id))
    assert r.status_code == 201, r.text
    made = r.json()["grant"]
    assert made["granted_by"] == f"guardian:{carol.id}" and made["basis"] == link["basis"]
    assert carol.get("/guardians").json()["links"][0]["subject_name"] == "Ann"

    # An operator links with a recorded basis; without one, refused.
    dave = portal.person("dave@example.org", "Dave")
    body = {"email": "dave@example.org", "subject": ann.subject_id}
    assert operator.post("/guardians", body).status_code == 422
    r = operator.post("/guardians", body | {"basis": "court order 2031/17, sha256 ab12"})
    assert r.status_code == 201 and r.json()["link"]["basis"].startswith("court order")
    assert "guardian" in _roles(dave)
    assert {s["id"] for s in operator.get("/subjects").json()["subjects"]} >= {ann.subject_id}

    # Ann ends Carol's link: Carol loses access at once.
    assert ann.call("DELETE", f"/guardians/{link['id']}").status_code == 200
    assert carol.get(f"/grants/{own.id}").status_code == 404
    assert "guardian" not in _roles(carol)
    assert ann.call("DELETE", f"/guardians/{link['id']}").status_code == 404  # already ended
    entries = [e for e in portal.store.audit_log()[0] if e.subject == ann.subject_id]
    assert [e.action for e in entries].count("guardian_link") == 2
    assert "guardian_unlink" in [e.action for e in entries]


def _roles(person: Person) -> list[str]:
    return person.refresh()["roles"]


def test_injection_payloads_are_stored_verbatim_and_served_as_json(portal):
    names = []
    for i, payload in enumerate(PAYLOADS):
        person = portal.person(f"p{i}@example.org", payload)
        names.append(person)
        assert person.user["display_name"] == payload
    ann, guardian = names[0], names[1]
    operator = portal.staff("op@example.org", "operator")
    grant = store_grant(portal.store, portal.keys, ann.subject_id, "ann")
    for payload in PAYLOADS:
        r = operator.post(
            "/deployments",
            {"name": f"d{len(payload)}", "description": payload, "avatars": [grant.avatar_id]},
        )
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["deployment"]["description"] == payload
    r = operator.post(
        "/guardians",
        {"email": guardian.user["email"], "subject": ann.subject_id, "basis": PAYLOADS[2]},
    )
    assert r.status_code == 201 and r.json()["link"]["basis"] == PAYLOADS[2]
    r = ann.post(f"/grants/{grant.id}/revoke", {"confirm": True, "reason": PAYLOADS[0]})
    assert r.json()["grant"]["revocation"]["reason"] == PAYLOADS[0]

    engine = portal.store.engine
    assert {"grants", "portal_users", "portal_deployments"} <= set(
        inspect(engine).get_table_names()
    )
    with Session(engine) as s:
        stored = set(s.execute(select(Subject.display_name)).scalars())
        assert set(PAYLOADS) <= stored
        assert set(PAYLOADS) <= set(s.execute(select(Deployment.description)).scalars())
        assert s.execute(select(GuardianLink.basis)).scalar_one() == PAYLOADS[2]
        assert s.execute(text("SELECT count(*) FROM grants")).scalar_one() == 1
    assert not verify_chain(portal.store)
    r = operator.get("/subjects")
    assert {s["display_name"] for s in r.json()["subjects"]} == set(PAYLOADS)
    r = ann.post("/guardians", {"email": "x@example.org", "basis": "a\x00b"})
    assert r.status_code == 422 and "control characters" in r.json()["error"]


def test_sessions_cookie_expiry_and_signout(portal):
    ann = Person(portal.app)
    r = ann.client.post(
        "/api/consent/auth/signup",
        json={"email": "Ann@Example.org ", "password": PASSWORD, "display_name": "Ann"},
    )
    assert r.status_code == 201
    cookie = r.headers["set-cookie"]
    for part in ("likeness_portal=", "HttpOnly", "SameSite=strict", "Secure", "Path=/"):
        assert part in cookie, cookie
    assert f"Max-Age={12 * 3600}" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    with Session(portal.store.engine) as s:
        rows = s.execute(select(PortalSession)).scalars().all()
        assert [row.token_hash for row in rows] == [token_hash(token)]
        assert token not in json.dumps([(row.token_hash, row.csrf_token) for row in rows])
    ann.refresh()
    assert ann.user["email"] == "ann@example.org"

    # Wrong password and unknown email read the same.
    for email, password in (("ann@example.org", "wrong password!"), ("no@example.org", PASSWORD)):
        r = Person(portal.app).client.post(
            "/api/consent/auth/signin", json={"email": email, "password": password}
        )
        assert r.status_code == 401 and r.json() == {"error": "wrong email or password"}

    with Session(portal.store.engine) as s, s.begin():
        s.execute(update(PortalSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert ann.get("/auth/me").status_code == 401
    ann.signin("ANN@example.org")
    old_csrf = ann.csrf
    assert ann.post("/auth/signout").status_code == 200
    assert ann.get("/auth/me").status_code == 401
    ann.signin("ann@example.org")
    r = ann.post("/auth/signout", headers={"X-CSRF-Token": old_csrf})
    assert r.status_code == 403  # the old session's token is not this session's


def test_signup_rules_and_closed_signup():
    open_portal = make_portal()
    client = Person(open_portal.app).client
    cases = [
        ({"email": "not-an-email", "password": PASSWORD, "display_name": "A"}, 422, "email"),
        ({"email": "a@example.org", "password": "short", "display_name": "A"}, 422, "10"),
        ({"email": "a@example.org", "password": PASSWORD, "display_name": "  "}, 422, "name"),
        ({"email": "a@example.org", "password": PASSWORD, "display_name": "x" * 201}, 422, "long"),
    ]
    for body, status, word in cases:
        r = client.post("/api/consent/auth/signup", json=body)
        assert r.status_code == status and word in r.json()["error"], r.text
    open_portal.person("a@example.org")
    r = client.post(
        "/api/consent/auth/signup",
        json={"email": "A@example.org", "password": PASSWORD, "display_name": "A"},
    )
    assert r.status_code == 409
    with Session(open_portal.store.engine) as s:
        assert s.execute(text("SELECT count(*) FROM subjects")).scalar_one() == 1
    open_portal.store.close()

    closed = make_portal(open_signup=False)
    r = Person(closed.app).client.post(
        "/api/consent/auth/signup",
        json={"email": "b@example.org", "password": PASSWORD, "display_name": "B"},
    )
    assert r.status_code == 403 and "closed" in r.json()["error"]
    closed.store.close()


def test_signin_is_rate_limited_per_address():
    limited = make_portal(signin_per_minute=3)
    client = Person(limited.app).client
    for _ in range(3):
        body = {"email": "x@example.org", "password": PASSWORD}
        assert client.post("/api/consent/auth/signin", json=body).status_code == 401
    r = client.post("/api/consent/auth/signin", json=body)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert "too many sign-in attempts" in r.json()["error"]
    limited.store.close()

    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    limiter.hit("a")
    limiter.hit("a")
    limiter.hit("b")
    with pytest.raises(Exception, match="too many") as err:
        limiter.hit("a")
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "60"}
    now[0] = 59.5
    assert limiter.retry_after("a") == pytest.approx(0.5)
    now[0] = 60.0
    limiter.hit("a")  # the first hit left the window


def test_export_then_delete_my_data(portal):
    ann = portal.person("ann@example.org", "Ann")
    operator = portal.staff("op@example.org", "operator")
    first = store_grant(portal.store, portal.keys, ann.subject_id, "one")
    second = store_grant(portal.store, portal.keys, ann.subject_id, "two")
    ConsentGate(portal.store, portal.keys).record_use(
        "use_start", avatar_id=first.avatar_id, deployment="kiosk", session="s1"
    )
    operator.post("/deployments", {"name": "home", "avatars": [first.avatar_id]})

    r = ann.get(f"/subjects/{ann.subject_id}/export")
    assert r.status_code == 200
    assert "attachment" in r.headers["content-disposition"]
    data = r.json()
    assert data["subject"]["display_name"] == "Ann"
    assert {g["id"] for g in data["grants"]} == {first.id, second.id}
    assert {a["id"] for a in data["avatars"]} == {first.avatar_id, second.avatar_id}
    assert all(a["embedding_stored"] for a in data["avatars"])
    assert len(data["liveness"]) == 2 and data["usage"]["total"] == 1
    assert {e["action"] for e in data["audit"]} >= {"account", "signin", "grant", "use_start"}
    assert all("embedding" not in a for a in data["avatars"])
    assert portal.store.audit_log()[0][-1].action == "export"

    for confirm in (None, "yes", True):
        r = ann.post(f"/subjects/{ann.subject_id}/delete", {"confirm": confirm})
        assert r.status_code == 400, r.text
    r = ann.post(f"/subjects/{ann.subject_id}/delete", {"confirm": "Delete"})
    assert r.status_code == 200, r.text
    assert set(r.json()["revoked"]) == {first.id, second.id}
    with pytest.raises(ShreddedError):
        portal.store.avatar_embedding(first.avatar_id)
    assert all(g.revoked for g in portal.store.list_grants(ann.subject_id))
    assert deployment_allows(portal.store, "home", first.avatar_id) is False
    assert not verify_chain(portal.store)


def test_deployments_belong_to_operators(portal):
    ann = portal.person("ann@example.org", "Ann")
    operator = portal.staff("op@example.org", "operator")
    grant = store_grant(portal.store, portal.keys, ann.subject_id, "ann")
    other = store_grant(portal.store, portal.keys, ann.subject_id, "other")

    assert ann.get("/deployments").status_code == 403
    assert ann.post("/deployments", {"name": "x"}).status_code == 403
    body = {"name": "care-home.1", "description": "Rose ward", "avatars": [grant.avatar_id]}
    r = operator.post("/deployments", body)
    assert r.status_code == 201, r.text
    assert operator.post("/deployments", body).status_code == 409
    assert operator.post("/deployments", body | {"name": "bad name!"}).status_code == 422
    assert (
        operator.post("/deployments", body | {"name": "n2", "avatars": ["f" * 64]}).status_code
        == 422
    )
    assert deployment_allows(portal.store, "care-home.1", grant.avatar_id) is True
    assert deployment_allows(portal.store.engine, "care-home.1", other.avatar_id) is False
    assert deployment_allows(portal.store, "unregistered", grant.avatar_id) is None

    r = operator.call("PUT", "/deployments/care-home.1", {"avatars": [other.avatar_id]})
    assert r.status_code == 200 and r.json()["deployment"]["avatars"] == [other.avatar_id]
    assert deployment_allows(portal.store, "care-home.1", grant.avatar_id) is False
    assert operator.call("PUT", "/deployments/nope", {"avatars": []}).status_code == 404
    live = operator.get("/avatars").json()["avatars"]
    assert {a["avatar_id"] for a in live} == {grant.avatar_id, other.avatar_id}
    assert all("subject" not in a for a in live)
    assert operator.call("DELETE", "/deployments/care-home.1").status_code == 200
    assert deployment_allows(portal.store, "care-home.1", other.avatar_id) is None
    actions = [
        e.data().get("action") for e in portal.store.audit_log()[0] if e.action == "deployment"
    ]
    assert actions == ["created", "updated", "deleted"]


def test_auditor_reads_and_verifies_the_log_only(portal):
    ann = portal.person("ann@example.org", "Ann")
    auditor = portal.staff("aud@example.org", "auditor")
    store_grant(portal.store, portal.keys, ann.subject_id, "ann")
    assert auditor.get("/grants").status_code == 403
    assert auditor.get("/subjects").status_code == 403
    assert auditor.get("/deployments").status_code == 403
    assert ann.get("/audit").status_code == 403

    page = auditor.get("/audit", params={"after": 0, "limit": 2}).json()
    assert [e["seq"] for e in page["entries"]] == [1, 2]
    rest = auditor.get("/audit", params={"after": 2}).json()["entries"]
    assert rest[-1]["seq"] == page["head_seq"]
    assert auditor.get("/audit", params={"limit": "lots"}).status_code == 400
    assert auditor.get("/audit/verify").json() == {"intact": True, "problems": []}

    with Session(portal.store.engine) as s, s.begin():
        s.execute(update(AuditRow).where(AuditRow.seq == 2).values(actor="someone else"))
    result = auditor.get("/audit/verify").json()
    assert result["intact"] is False
    assert [p["kind"] for p in result["problems"]] == ["hash_mismatch"]


def test_portal_tables_match_the_migration(portal):
    import consent.portal.models  # noqa: F401  (the portal tables on Base.metadata)

    with portal.store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    portal_diff = [d for d in diff if "portal_" in repr(d)]
    assert portal_diff == []
    with Session(portal.store.engine) as s:
        assert s.execute(select(UserRow)).first() is None


def test_enrolment_routes_run_the_enrolment_service():
    import io

    from PIL import Image

    from consent.liveness.testclips import reference_photo

    limited = make_portal(challenges_per_hour=2)
    try:
        ann = limited.person("ann@example.org", "Ann")
        carol = limited.person("carol@example.org", "Carol")
        accounts.link_guardian(
            limited.store,
            guardian_email="carol@example.org",
            subject_id=ann.subject_id,
            basis="daughter",
            by="test",
        )
        png = io.BytesIO()
        Image.fromarray(reference_photo()).save(png, "PNG")
        headers = {"X-CSRF-Token": carol.csrf, "Content-Type": "image/png"}
        r = carol.client.post(
            f"/api/consent/enrol/photo?subject={ann.subject_id}",
            content=png.getvalue(),
            headers=headers,
        )
        assert r.status_code == 200, r.text
        avatar = r.json()["avatar_id"]
        assert r.json()["faces"] == 1 and limited.store.subject_of_avatar(avatar) == ann.subject_id
        r = ann.post("/enrol/photo", content=b"GIF89a not a photo", headers={})
        assert r.status_code == 415 and "JPEG or PNG" in r.json()["error"]

        assert ann.get("/enrol/challenge").status_code == 404
        first = ann.post("/enrol/challenge", {"avatar_id": avatar})
        assert first.status_code == 200, first.text
        assert set(first.json()) >= {"nonce", "digits", "turns", "expires_at", "instructions"}
        assert ann.get("/enrol/challenge").json()["nonce"] == first.json()["nonce"]
        assert ann.post("/enrol/challenge", {"avatar_id": avatar}).status_code == 200
        r = ann.post("/enrol/challenge", {"avatar_id": avatar})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        r = ann.client.post(
            f"/api/consent/enrol/clip?nonce={first.json()['nonce']}",
            content=b"clip",
            headers={"X-CSRF-Token": ann.csrf},
        )
        assert r.status_code == 400 and "started_at" in r.json()["error"]
    finally:
        limited.store.close()
