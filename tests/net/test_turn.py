"""TURN credentials (coturn's REST-API scheme), the ICE configuration, and a real coturn
that accepts a minted credential and refuses a forged or expired one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import subprocess
import threading
import time

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from runtime.config import load_config, masked_dump
from runtime.errors import ConfigError
from runtime.netlab import NetLab
from runtime.turn import (
    IceProvider,
    RelayUnavailableError,
    check_relay,
    expiry_of,
    page_configuration,
    rest_credentials,
)
from tests.net.conftest import TURN_SECRET

RELAY = RTCIceTransportPolicy.RELAY


def test_known_vector():
    # Pinned once from `printf '%s' 1700000600:alice | openssl dgst -sha1 -hmac north-wind
    # -binary | base64`, an implementation other than ours.
    user, password = rest_credentials("north-wind", "alice", 600, 1_700_000_000.7)
    assert user == "1700000600:alice"
    assert password == "+ynvvd5H6tVm4AvSrj474oEaHmY="


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("secret", ["s", "a longer secret with spaces", "ünïcødé"])
def test_matches_openssl(secret):
    user, password = rest_credentials(secret, "kiosk7", 86_400, 1_800_000_000)
    digest = subprocess.run(
        ["openssl", "dgst", "-sha1", "-hmac", secret, "-binary"],
        input=user.encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert password == base64.b64encode(digest).decode()
    assert (
        password
        == base64.b64encode(
            hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()
        ).decode()
    )


def test_expiry_is_now_plus_ttl():
    user, _ = rest_credentials("k", "u", 600, 1_000.9)
    assert expiry_of(user) == 1_600
    with pytest.raises(ValueError, match="REST-API username"):
        expiry_of("alice")


@pytest.mark.parametrize(
    ("secret", "user", "ttl", "message"),
    [("", "u", 60, "empty"), ("k", "a:b", 60, "':'"), ("k", "u", 0, "positive")],
)
def test_bad_input_is_refused(secret, user, ttl, message):
    with pytest.raises(ValueError, match=message):
        rest_credentials(secret, user, ttl, 0)


def test_plain_url_strings_still_work():
    settings = load_config(server={"ice_servers": ["stun:10.0.0.1:3478"]})
    assert settings.server.ice_servers[0].urls == ["stun:10.0.0.1:3478"]
    page = IceProvider.from_config(settings.server).for_page()
    assert page == {
        "iceServers": [{"urls": ["stun:10.0.0.1:3478"]}],
        "iceTransportPolicy": "all",
        "expires_at": None,
    }


def test_turn_servers_get_fresh_minted_credentials(monkeypatch):
    monkeypatch.setenv("LIKENESS_SERVER__TURN_SECRET", "hush-" * 4)
    settings = load_config(
        server={
            "ice_servers": [
                "stun:10.0.0.1:3478",
                {"urls": ["turn:10.0.0.1:3478", "turn:10.0.0.1:3478?transport=tcp"]},
                {"urls": "turns:relay.example:5349", "username": "static", "credential": "pw"},
            ],
            "ice_transport_policy": "relay",
            "turn_ttl_s": 300,
        }
    )
    clock = [1_900_000_000.0]
    ice = IceProvider.from_config(settings.server)
    ice._clock = lambda: clock[0]
    page = ice.for_page("session1")
    stun, minted, static = page["iceServers"]
    assert stun == {"urls": ["stun:10.0.0.1:3478"]}
    assert minted["username"] == "1900000300:session1"
    assert minted["credential"] == rest_credentials("hush-" * 4, "session1", 300, clock[0])[1]
    assert static == {
        "urls": ["turns:relay.example:5349"],
        "username": "static",
        "credential": "pw",
    }
    assert page["iceTransportPolicy"] == "relay" and page["expires_at"] == 1_900_000_300
    # Per peer: another user and a later time give another credential.
    clock[0] += 10
    assert ice.for_page()["iceServers"][1]["credential"] != minted["credential"]
    # The server peer gets the same servers as aiortc objects.
    assert [s.urls for s in ice.rtc_configuration().iceServers][1][0] == "turn:10.0.0.1:3478"
    assert ice.aiortc_notes() == ["aiortc uses only the first TURN URL on the server side"]
    # The secret and the credentials stay out of dumps and reprs.
    dumped = repr(masked_dump(settings)) + repr(ice) + repr(ice.servers())
    assert "hush-" not in dumped and "'pw'" not in dumped
    assert masked_dump(settings)["server"]["turn_secret"] == "***"
    assert minted["credential"] not in dumped


def test_secret_from_a_file(tmp_path):
    path = tmp_path / "turn.secret"
    path.write_text("from-a-file\n")
    settings = load_config(server={"ice_servers": ["turn:10.0.0.1"], "turn_secret_file": str(path)})
    page = IceProvider.from_config(settings.server).for_page("u")
    user = page["iceServers"][0]["username"]
    assert (
        page["iceServers"][0]["credential"]
        == rest_credentials("from-a-file", "u", 600, expiry_of(user) - 600)[1]
    )


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"ice_servers": ["turn:10.0.0.1"]}, r"server.ice_servers\[0\]: a TURN server needs"),
        ({"ice_transport_policy": "relay"}, "server.ice_transport_policy: 'relay' needs"),
        (
            {"turn_secret": "a", "turn_secret_file": "/nonexistent"},
            "server.turn_secret_file: give either",
        ),
        ({"turn_secret_file": "/nonexistent/turn"}, "server.turn_secret_file: cannot read"),
    ],
)
def test_config_mistakes_fail_fast_naming_the_key(server, message):
    with pytest.raises(ConfigError, match=message):
        IceProvider.from_config(load_config(server=server).server)


def test_a_bad_url_is_a_config_error():
    with pytest.raises(ConfigError, match="server.ice_servers"):
        load_config(server={"ice_servers": ["http://10.0.0.1"]})


def test_page_configuration_round_trip():
    config = page_configuration(
        {
            "iceServers": [{"urls": ["turn:h:3478"], "username": "1:u", "credential": "c"}],
            "iceTransportPolicy": "relay",
        }
    )
    assert config.iceTransportPolicy == RELAY
    assert config.iceServers[0].username == "1:u"
    with pytest.raises(ValueError):
        page_configuration({"iceServers": "turn:h"})


def test_relay_only_without_credentials_fails_before_any_offer():
    # The cheapest failing input: relay-only, TURN URL but nothing to authenticate with.
    bare = RTCConfiguration(
        iceServers=[RTCIceServer("turn:10.0.0.1:3478")], iceTransportPolicy=RELAY
    )
    with pytest.raises(RelayUnavailableError, match="needs a TURN server with a username"):
        asyncio.run(check_relay(bare))
    none = RTCConfiguration(iceServers=[], iceTransportPolicy=RELAY)
    with pytest.raises(RelayUnavailableError):
        asyncio.run(check_relay(none))


def _gather_in_client(lab: NetLab, secret: str, now: float) -> BaseException | None:
    """check_relay from the NAT'd client namespace against the lab's coturn."""
    user, password = rest_credentials(secret, "probe", 600, now)
    config = RTCConfiguration(
        iceServers=[RTCIceServer(lab.coturn.url, user, password)], iceTransportPolicy=RELAY
    )
    box: list[BaseException | None] = []

    def run() -> None:
        with lab.entered("client"):
            try:
                asyncio.run(check_relay(config))
                box.append(None)
            except BaseException as err:  # noqa: BLE001 - handed to the test
                box.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert box, "gathering did not finish in 30 s"
    return box[0]


@pytest.mark.parametrize(
    ("secret", "age_s", "refused"),
    [
        (TURN_SECRET, 0, False),  # minted with coturn's secret: a relay candidate
        ("not-" + TURN_SECRET, 0, True),  # forged: another secret
        (TURN_SECRET, 1200, True),  # expired: minted 20 min ago with a 10 min lifetime
    ],
    ids=["minted", "forged", "expired"],
)
def test_real_coturn_accepts_minted_refuses_forged_and_expired(lab, secret, age_s, refused):
    err = _gather_in_client(lab, secret, time.time() - age_s)
    if refused:
        assert isinstance(err, RelayUnavailableError), err
        assert "refused the credentials" in str(err)
        assert "401" in lab.coturn.log_text()
        assert "ALLOCATE processed, success" not in lab.coturn.log_text()
    else:
        assert err is None, err
        assert "ALLOCATE processed, success" in lab.coturn.log_text()


def test_the_server_fails_fast_on_a_turn_url_without_a_secret():
    from runtime.server import create_app

    with pytest.raises(ConfigError, match=r"server.ice_servers\[0\]: a TURN server needs"):
        create_app(load_config(server={"ice_servers": ["turn:10.0.0.1:3478"]}))


def test_no_credentials_before_the_server_could_take_a_session():
    from starlette.testclient import TestClient

    from runtime.server import create_app

    settings = load_config(server={"ice_servers": ["turn:10.0.0.1"], "turn_secret": "shh"})
    client = TestClient(create_app(settings))  # no lifespan: the models are not loaded
    refused = client.post("/api/rtc/ice")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    assert "credential" not in refused.text
    assert client.get("/api/rtc/ice").status_code != 200  # POST only: nothing cached
