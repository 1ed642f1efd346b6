"""Helpers of the portal tests (this module holds no tests).

``portal_app`` builds the real server app (``runtime.server.create_app``) over a real
consent store and gate, without loading the speech models (no lifespan). ``Person`` is
one browser: its own cookie jar, the session's CSRF token, JSON helpers.
``SoftAuthenticator`` is the authenticator side of WebAuthn done in Python (P-256,
"none" attestation), so the server's real verification runs in API tests; the browser
test uses Chromium's virtual authenticator instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.routing import Mount
from starlette.testclient import TestClient

from consent.gate import ConsentGate
from consent.keys import SigningKeys
from consent.store import ConsentStore, photo_hash, utcnow
from runtime.config import load_config

PASSWORD = "correct horse battery staple"
ORIGIN = "https://localhost"


def settings_for(**portal: Any):
    """Settings of the test's data dir with portal overrides (generous sign-in limit)."""
    return load_config(portal={"signin_per_minute": 1000, **portal})


def portal_app(store: ConsentStore, settings) -> Any:
    """The real app with ``store`` behind its consent gate (models not loaded)."""
    from runtime.server import create_app

    app = create_app(settings)
    keys = SigningKeys.load(settings.data_dir / "consent" / "signing")
    app.state.companion.gate = ConsentGate(store, keys)
    return app


def api_routes(app) -> list[tuple[str, str, Any]]:
    """(method, full path, endpoint) of every /api/consent/ route, found by walking the app."""
    found: list[tuple[str, str, Any]] = []

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif hasattr(route, "methods") and route.methods:
                path = prefix + route.path
                if path.startswith("/api/consent/"):
                    for method in sorted(route.methods - {"HEAD"}):
                        found.append((method, path, route.endpoint))

    walk(app.routes, "")
    return found


class Person:
    """One browser session against the app."""

    def __init__(self, app, base_url: str = ORIGIN) -> None:
        self.client = TestClient(app, base_url=base_url)
        self.csrf = ""
        self.user: dict[str, Any] = {}

    @property
    def subject_id(self) -> str:
        return self.user["subject_id"]

    @property
    def id(self) -> str:
        return self.user["id"]

    def refresh(self) -> dict[str, Any]:
        me = self.client.get("/api/consent/auth/me")
        assert me.status_code == 200, me.text
        self.csrf, self.user = me.json()["csrf_token"], me.json()["user"]
        return self.user

    def signup(self, email: str, name: str, password: str = PASSWORD) -> Person:
        r = self.client.post(
            "/api/consent/auth/signup",
            json={"email": email, "password": password, "display_name": name},
        )
        assert r.status_code == 201, r.text
        self.refresh()
        return self

    def signin(self, email: str, password: str = PASSWORD) -> Person:
        r = self.client.post(
            "/api/consent/auth/signin", json={"email": email, "password": password}
        )
        assert r.status_code == 200, r.text
        self.refresh()
        return self

    def call(self, method: str, path: str, body: Any = None, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        if body is not None:
            kw["json"] = body
        return self.client.request(method, "/api/consent" + path, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw):
        return self.call("POST", path, body if body is not None else {}, **kw)


def give_face(store: ConsentStore, subject_id: str, label: str) -> tuple[str, str]:
    """Record a photo (avatar) of a subject and a passed liveness check on it."""
    avatar = store.add_avatar(subject_id, photo_hash(label.encode()), [0.5, -1.0, 2.0])
    rec = store.record_liveness(
        subject_id,
        avatar,
        points={"digits": True, "head_turns": True, "identity": True},
        scores={"identity_distance": 0.3},
        nonce=os.urandom(8).hex(),
    )
    return avatar, rec.id


def store_grant(store: ConsentStore, keys: SigningKeys, subject_id: str, label: str, **kw):
    """A subject's own grant on a new photo, issued straight into the store."""
    avatar, liveness = give_face(store, subject_id, label)
    args = {
        "subject_id": subject_id,
        "avatar_id": avatar,
        "deployments": ["kiosk"],
        "purposes": ["eldercare"],
        "expires_at": utcnow() + timedelta(days=30),
        "liveness_id": liveness,
    }
    return store.issue(keys, **(args | kw))


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """A passkey in Python: one P-256 credential, user verification always done."""

    def __init__(self, rp_id: str = "localhost", origin: str = ORIGIN) -> None:
        self.rp_id, self.origin = rp_id, origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.user_handle: bytes | None = None
        self.count = 0

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        body = {"type": kind, "challenge": challenge, "origin": origin or self.origin}
        return json.dumps(body | {"crossOrigin": False}).encode()

    def create(self, options: dict, origin: str | None = None) -> dict:
        """Answer ``navigator.credentials.create()`` options (JSON form)."""
        import cbor2

        self.user_handle = unb64u(options["user"]["id"])
        numbers = self.key.public_key().public_numbers()
        cose = {
            1: 2,
            3: -7,
            -1: 1,
            -2: numbers.x.to_bytes(32, "big"),
            -3: numbers.y.to_bytes(32, "big"),
        }
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([0x45])  # user present, user verified, attested credential data
            + (0).to_bytes(4, "big")
            + bytes(16)  # aaguid
            + len(self.credential_id).to_bytes(2, "big")
            + self.credential_id
            + cbor2.dumps(cose)
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client = self._client_data("webauthn.create", options["challenge"], origin)
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "response": {"clientDataJSON": b64u(client), "attestationObject": b64u(attestation)},
            "clientExtensionResults": {},
        }

    def get(self, options: dict, origin: str | None = None) -> dict:
        """Answer ``navigator.credentials.get()`` options (JSON form)."""
        self.count += 1
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([0x05])  # user present, user verified
            + self.count.to_bytes(4, "big")
        )
        client = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(
            auth_data + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64u(client),
                "authenticatorData": b64u(auth_data),
                "signature": b64u(signature),
                "userHandle": b64u(self.user_handle or b""),
            },
            "clientExtensionResults": {},
        }
