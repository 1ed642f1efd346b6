"""POST /api/consent/enrol/ice: the enrolment page's peer configuration.

Behind a home NAT the camera's media reaches the server only through the TURN relay, as
a companion session's does; the credentials are a relay's bandwidth, so only a person
who may enrol the subject gets them, counted, never cached, and expiring.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from runtime.config import load_config
from tests.consent.test_portal_support import Person, portal_app

SECRET = "enrol-relay-secret"


def _settings(**server):
    return load_config(portal={"signin_per_minute": 1000, "challenges_per_hour": 3}, server=server)


def _turned(store, **server):
    server = {
        "ice_servers": ["stun:10.0.0.1:3478", "turn:10.0.0.1:3478?transport=udp"],
        "turn_secret": SECRET,
        "turn_ttl_s": 300,
        **server,
    }
    app = portal_app(store, _settings(**server))
    return app, Person(app).signup("ann@example.org", "Ann")


def test_a_signed_in_person_gets_fresh_turn_credentials_coturn_accepts(store):
    _, ann = _turned(store, ice_transport_policy="relay")
    before = time.time()
    r = ann.post("/enrol/ice")
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    page = r.json()
    assert page["iceTransportPolicy"] == "relay"
    stun, turn = page["iceServers"]
    assert stun == {"urls": ["stun:10.0.0.1:3478"]}  # STUN takes no credentials
    expiry, _user = turn["username"].split(":", 1)
    assert before + 300 - 2 <= int(expiry) <= time.time() + 300
    assert page["expires_at"] == int(expiry)
    # coturn (use-auth-secret) recomputes the password from the username: it must match.
    mac = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(mac).decode()
    again = ann.post("/enrol/ice").json()["iceServers"][1]
    assert again["username"] != turn["username"]  # one per connection, not shared


def test_nobody_signed_out_or_without_csrf_gets_a_credential(store):
    app, ann = _turned(store)
    stranger = Person(app)
    refused = stranger.client.post("/api/consent/enrol/ice")
    assert refused.status_code == 401 and SECRET not in refused.text
    forged = ann.client.post("/api/consent/enrol/ice")  # ann's cookie, no CSRF header
    assert forged.status_code == 403 and "credential" not in forged.text


def test_nobody_mints_credentials_for_a_person_they_may_not_act_for(store):
    app, ann = _turned(store)
    bob = Person(app).signup("bob@example.org", "Bob")
    r = bob.post(f"/enrol/ice?subject={ann.subject_id}")
    assert r.status_code in (403, 404) and "credential" not in r.text


def test_credentials_are_counted_with_the_checks_a_person_starts(store):
    _, ann = _turned(store)
    got = [ann.post("/enrol/ice").status_code for _ in range(4)]
    assert got == [200, 200, 200, 429]  # portal.challenges_per_hour = 3


def test_an_unreadable_secret_is_a_503_that_opens_no_ceremony(store, tmp_path):
    missing = tmp_path / "gone"
    missing.write_text("s3cret\n")
    app = portal_app(store, _settings(ice_servers=["turn:10.0.0.1"], turn_secret_file=str(missing)))
    ann = Person(app).signup("ann@example.org", "Ann")
    missing.unlink()  # rotated away after start-up
    r = ann.post("/enrol/ice")
    assert r.status_code == 503 and r.json() == {"error": "ICE servers unavailable"}
    offer = ann.post("/enrol/ceremony", {"avatar_id": "x", "type": "offer", "sdp": OFFER})
    # 503 before the ceremony opens: opening it would have refused the unknown photo (404).
    assert offer.status_code == 503, offer.text


def test_a_server_with_no_ice_servers_is_reached_directly(store):
    app = portal_app(store, _settings())
    ann = Person(app).signup("ann@example.org", "Ann")
    page = ann.post("/enrol/ice").json()
    assert page == {"iceServers": [], "iceTransportPolicy": "all", "expires_at": None}


# A minimal offer check_offer() accepts: audio, video and the data channel.
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendrecv",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sendrecv",
        "a=rtpmap:96 VP8/90000",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
        "",
    ]
)
