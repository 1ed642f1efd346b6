"""Every /api/consent/ route, found by walking the app's route table, on SQLite and PostgreSQL.

A new route is covered without touching this file: it must answer 401 without a session,
403 without the CSRF header (when it changes state) and never let one person reach another
person's grants, data, links or passkeys, nor a non-operator the deployments.
"""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from consent.portal import accounts, deployments
from consent.portal.models import Credential
from consent.store import utcnow
from tests.consent.test_portal_support import Person, api_routes, portal_app, settings_for

PUBLIC = {
    ("POST", "/api/consent/auth/signup"),
    ("POST", "/api/consent/auth/signin"),
    ("POST", "/api/consent/auth/passkey/signin/begin"),
    ("POST", "/api/consent/auth/passkey/signin/finish"),
}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
# Routes that also take the person as ?subject= (no id in the path).
SUBJECT_QUERY = {
    ("GET", "/api/consent/grants"),
    ("POST", "/api/consent/enrol/photo"),
    ("POST", "/api/consent/enrol/challenge"),
    ("GET", "/api/consent/enrol/challenge"),
    ("POST", "/api/consent/enrol/clip"),
    ("POST", "/api/consent/enrol/ceremony"),
    ("POST", "/api/consent/enrol/ice"),
}
# Routes that name the person in the JSON body, and who may legitimately do so anyway.
BODY_SUBJECT = {
    ("POST", "/api/consent/grants"): set(),
    ("POST", "/api/consent/guardians"): {"operator"},  # links with a recorded basis
}
# Parameters whose routes are the operator's own business (deployments, guardian links).
ALSO_ALLOWED = {"name": {"operator"}, "link_id": {"operator"}}


@pytest.fixture
def world(store):
    """Ann (with a grant, a passkey, a guardian) and people who must not reach her data."""
    from consent.keys import SigningKeys
    from tests.consent.test_portal_support import store_grant

    settings = settings_for()
    app = portal_app(store, settings)
    keys = SigningKeys.load(settings.data_dir / "consent" / "signing")
    ann = Person(app).signup("ann@example.org", "Ann Subject-Secret")
    bob = Person(app).signup("bob@example.org", "Bob")
    carol = Person(app).signup("carol@example.org", "Carol")  # Ann's guardian
    dave = Person(app).signup("dave@example.org", "Dave")  # Bob's guardian, not Ann's
    for email, role in (("op@example.org", "operator"), ("aud@example.org", "auditor")):
        accounts.create_user(store, email=email, display_name=role, role=role, password="x" * 12)
    operator = Person(app).signin("op@example.org", "x" * 12)
    auditor = Person(app).signin("aud@example.org", "x" * 12)
    grant = store_grant(store, keys, ann.subject_id, "ann photo")
    link = accounts.link_guardian(
        store, guardian_email="carol@example.org", subject_id=ann.subject_id, basis="b", by="t"
    )
    accounts.link_guardian(
        store, guardian_email="dave@example.org", subject_id=bob.subject_id, basis="b", by="t"
    )
    carol.refresh()
    dave.refresh()
    with Session(store.engine) as s, s.begin():
        s.add(
            Credential(
                id=uuid.uuid4().hex,
                credential_id="ann-passkey",
                user_id=ann.id,
                public_key=b"\x01" * 77,
                sign_count=0,
                name="Ann's phone",
                created_at=utcnow(),
            )
        )
    deployments.save_deployment(
        store, name="ann-home", description="", avatars=[grant.avatar_id], by="t", create=True
    )
    with Session(store.engine) as s:
        passkey_id = s.execute(select(Credential.id)).scalar_one()
    ids = {
        "grant_id": grant.id,
        "subject_id": ann.subject_id,
        "link_id": link.id,
        "passkey_id": passkey_id,
        "name": "ann-home",
    }
    return {
        "app": app,
        "store": store,
        "ann": ann,
        "carol": carol,
        "attackers": {"bob": bob, "dave": dave, "operator": operator, "auditor": auditor},
        "ids": ids,
        "grant": grant,
    }


def fill(path: str, ids: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in ids, f"route {path} has a parameter {name!r} this test cannot fill"
        return ids[name]

    return PARAM.sub(value, path)


def test_every_route_checks_session_csrf_and_ownership(world):
    app, ann, ids = world["app"], world["ann"], world["ids"]
    routes = [(m, p) for m, p, _ in api_routes(app)]
    assert len(routes) >= 30, routes
    public = {(m, p) for m, p, endpoint in api_routes(app) if endpoint.portal_public}
    assert public == PUBLIC, "a route was made public: add it here only after review"

    stranger = Person(app)
    for method, path in routes:
        url = fill(path, ids)
        if (method, path) in PUBLIC:
            if method in STATE_CHANGING:  # no JSON, or another site: refused before anything
                assert stranger.client.request(method, url, content=b"x").status_code == 403
                r = stranger.client.request(
                    method, url, json={}, headers={"Origin": "https://evil.example"}
                )
                assert r.status_code == 403, (method, path)
            continue
        r = stranger.client.request(method, url)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json() == {"error": "please sign in"}
        if method in STATE_CHANGING:
            for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
                r = ann.client.request(method, url, headers=headers, json={})
                assert r.status_code == 403, (method, path, headers, r.text)
            r = ann.call(
                method,
                url.removeprefix("/api/consent"),
                {},
                headers={"Origin": "https://evil.example"},
            )
            assert r.status_code == 403, (method, path, "foreign origin")

    secret_words = [ann.subject_id, "Subject-Secret", world["grant"].avatar_id]
    checked = 0
    for who, attacker in world["attackers"].items():
        for method, path in routes:
            if (method, path) in PUBLIC:
                continue
            params = PARAM.findall(path)
            if any(who in ALSO_ALLOWED.get(p, ()) for p in params):
                continue
            body = {"subject": ann.subject_id, "confirm": True} if method != "GET" else None
            urls = [fill(path, ids)] if params else []
            if (method, path) in SUBJECT_QUERY:
                urls.append(f"{path}?subject={ann.subject_id}")
            if who not in BODY_SUBJECT.get((method, path), {who}):
                urls.append(path)
                body = {
                    "subject": ann.subject_id,
                    "email": attacker.user["email"],
                    "avatar_id": world["grant"].avatar_id,
                    "deployments": ["kiosk"],
                    "purposes": ["eldercare"],
                    "expires_days": 30,
                    "basis": "I say so",
                }
            for url in urls:
                r = attacker.call(method, url.removeprefix("/api/consent"), body)
                assert r.status_code in (403, 404), (who, method, url, r.status_code, r.text)
                assert not any(word in r.text for word in secret_words), (who, method, url, r.text)
                checked += 1
    assert checked >= 4 * 15

    # Nothing of Ann's changed, and her guardian still reaches her grant.
    store = world["store"]
    assert not store.grant(world["grant"].id).revoked
    assert store.avatar_embedding(world["grant"].avatar_id).size == 3
    assert accounts.guardian_subjects(store.engine, world["carol"].id) == {ann.subject_id}
    assert deployments.deployment_allows(store, "ann-home", world["grant"].avatar_id) is True
    assert [p["name"] for p in ann.get("/auth/passkeys").json()["passkeys"]] == ["Ann's phone"]
    assert world["carol"].get(f"/grants/{world['grant'].id}").status_code == 200
    assert ann.get(f"/subjects/{ann.subject_id}/usage").status_code == 200


def test_operator_cannot_grant_for_anyone(world):
    operator = world["attackers"]["operator"]
    body = {
        "subject": world["ann"].subject_id,
        "avatar_id": world["grant"].avatar_id,
        "deployments": ["kiosk"],
        "purposes": ["eldercare"],
        "expires_days": 30,
        "basis": "the operator says so",
    }
    r = operator.post("/grants", body)
    assert r.status_code == 403 and "cannot grant" in r.json()["error"]
    r = operator.post("/grants", body | {"subject": None})
    assert r.status_code == 403
    assert len(world["store"].list_grants(world["ann"].subject_id)) == 1
