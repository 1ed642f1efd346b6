"""Passkeys through the real API and py_webauthn's real verification, with a software
authenticator (the browser test does the same with Chromium's virtual authenticator)."""

from __future__ import annotations

import pytest

from consent.store import ConsentStore
from tests.consent.test_portal_support import (
    Person,
    SoftAuthenticator,
    b64u,
    portal_app,
    settings_for,
)


@pytest.fixture
def app():
    settings = settings_for()
    store = ConsentStore.open(settings.data_dir)
    yield portal_app(store, settings)
    store.close()


def register(person: Person, device: SoftAuthenticator, name: str = "phone"):
    begin = person.post("/auth/passkey/register/begin").json()
    return person.post(
        "/auth/passkey/register/finish",
        {
            "challenge_id": begin["challenge_id"],
            "credential": device.create(begin["options"]),
            "name": name,
        },
    )


def begin_signin(client: Person, email: str | None = None) -> dict:
    r = client.post("/auth/passkey/signin/begin", {"email": email} if email else {})
    assert r.status_code == 200, r.text
    return r.json()


def finish_signin(client: Person, begin: dict, credential: dict):
    return client.post(
        "/auth/passkey/signin/finish",
        {"challenge_id": begin["challenge_id"], "credential": credential},
    )


def test_register_then_sign_in_with_the_passkey(app):
    ann = Person(app).signup("ann@example.org", "Ann")
    device = SoftAuthenticator()
    begin = ann.post("/auth/passkey/register/begin").json()
    options = begin["options"]
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["user"]["name"] == "ann@example.org"
    r = ann.post(
        "/auth/passkey/register/finish",
        {
            "challenge_id": begin["challenge_id"],
            "credential": device.create(options),
            "name": "phone",
        },
    )
    assert r.status_code == 201, r.text
    again = ann.post(
        "/auth/passkey/register/finish",
        {"challenge_id": begin["challenge_id"], "credential": device.create(options)},
    )
    assert again.status_code == 400 and "already used" in again.json()["error"]
    second = ann.post("/auth/passkey/register/begin").json()["options"]
    assert [c["id"] for c in second["excludeCredentials"]] == [b64u(device.credential_id)]

    browser = Person(app)
    for email in (None, "ann@example.org"):
        begin = begin_signin(browser, email)
        if email:
            allowed = begin["options"]["allowCredentials"]
            assert [c["id"] for c in allowed] == [b64u(device.credential_id)]
        r = finish_signin(browser, begin, device.get(begin["options"]))
        assert r.status_code == 200, r.text
        assert browser.refresh()["email"] == "ann@example.org"
        assert "likeness_portal=" in r.headers["set-cookie"]
    listed = browser.get("/auth/passkeys").json()["passkeys"]
    assert [p["name"] for p in listed] == ["phone"] and listed[0]["last_used_at"]


def test_replays_wrong_origins_and_strangers_are_refused(app):
    ann = Person(app).signup("ann@example.org", "Ann")
    device = SoftAuthenticator()
    assert register(ann, device).status_code == 201
    browser = Person(app)

    begin = begin_signin(browser)
    answer = device.get(begin["options"])
    assert finish_signin(browser, begin, answer).status_code == 200
    r = finish_signin(browser, begin, answer)  # the same answer again
    assert r.status_code == 400 and "already used" in r.json()["error"]
    fresh = begin_signin(browser)
    r = finish_signin(browser, fresh, answer)  # an old answer to a new challenge
    assert r.status_code == 401

    fresh = begin_signin(browser)
    r = finish_signin(browser, fresh, device.get(fresh["options"], origin="https://evil.example"))
    assert r.status_code == 401 and "could not be verified" in r.json()["error"]

    stranger = SoftAuthenticator()
    stranger.user_handle = b"x" * 32
    fresh = begin_signin(browser)
    r = finish_signin(browser, fresh, stranger.get(fresh["options"]))
    assert r.status_code == 401 and r.json()["error"] == "this passkey is not registered here"

    # Bob cannot finish a registration that Ann began.
    bob = Person(app).signup("bob@example.org", "Bob")
    begin = ann.post("/auth/passkey/register/begin").json()
    r = bob.post(
        "/auth/passkey/register/finish",
        {
            "challenge_id": begin["challenge_id"],
            "credential": SoftAuthenticator().create(begin["options"]),
        },
    )
    assert r.status_code == 400
    assert bob.get("/auth/passkeys").json()["passkeys"] == []

    # Removing the passkey ends sign-ins with it; Bob cannot remove Ann's.
    passkey_id = ann.get("/auth/passkeys").json()["passkeys"][0]["id"]
    assert bob.call("DELETE", f"/auth/passkeys/{passkey_id}").status_code == 404
    assert ann.call("DELETE", f"/auth/passkeys/{passkey_id}").status_code == 200
    fresh = begin_signin(browser)
    assert finish_signin(browser, fresh, device.get(fresh["options"])).status_code == 401


def test_passkeys_need_a_host_name(app):
    ann = Person(app, base_url="https://127.0.0.1").signup("ann@example.org", "Ann")
    r = ann.post("/auth/passkey/register/begin")
    assert r.status_code == 400 and "localhost" in r.json()["error"]
