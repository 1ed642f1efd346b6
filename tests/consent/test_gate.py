"""The pure gate: one refusal per case, and the allow case."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from consent.gate import check
from consent.grants import Grant, sign
from consent.keys import SigningKeys

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
AVATAR = "a" * 64


@pytest.fixture
def grant(signing_keys) -> Grant:
    return sign(
        Grant(
            id="g1",
            subject="s1",
            avatar_id=AVATAR,
            allow_face=True,
            allow_voice=False,
            deployments=("kiosk",),
            purposes=("eldercare",),
            expires_at=NOW + timedelta(hours=1),
            issued_at=NOW - timedelta(hours=1),
            conditions={"ai_label": True},
            liveness_id="l1",
        ),
        signing_keys,
    )


def _check(grant, keys, **kw):
    args = dict(
        avatar_id=AVATAR,
        deployment="kiosk",
        purpose="eldercare",
        want_voice=False,
        now=NOW,
        keys_public=keys.public_keys(),
        revoked=False,
    )
    args.update(kw)
    return check(grant, **args)


def test_allows_in_scope(grant, signing_keys):
    d = _check(grant, signing_keys)
    assert d.allowed and d.grant_id == "g1"
    assert dict(d.conditions) == {"ai_label": True}
    assert "allows" in d.reason


def test_wildcards_allow(signing_keys, grant):
    wide = sign(dataclasses.replace(grant, deployments=("*",), purposes=("*",)), signing_keys)
    assert _check(wide, signing_keys, deployment="browser", purpose="companionship").allowed


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no_grant", "no consent grant"),
        ("altered", "invalid signature"),
        ("forged", "invalid signature"),
        ("unknown_key", "unknown key"),
        ("expired", "expired"),
        ("revoked", "revoked"),
        ("avatar", "another photo"),
        ("deployment", "deployment 'browser'"),
        ("purpose", "purpose 'companionship'"),
        ("voice", "voice"),
        ("face", "face"),
    ],
)
def test_refusals(case, words, grant, signing_keys, tmp_path):
    g, kw = grant, {}
    if case == "no_grant":
        g = None
    elif case == "altered":
        g = dataclasses.replace(grant, purposes=("eldercare", "companionship"))
    elif case == "forged":
        g = dataclasses.replace(grant, signature=bytes(64))
    elif case == "unknown_key":
        g = sign(grant, SigningKeys.load(tmp_path / "other"))
    elif case == "expired":
        kw["now"] = grant.expires_at
    elif case == "revoked":
        kw["revoked"] = True
    elif case == "avatar":
        kw["avatar_id"] = "b" * 64
    elif case == "deployment":
        kw["deployment"] = "browser"
    elif case == "purpose":
        kw["purpose"] = "companionship"
    elif case == "voice":
        kw["want_voice"] = True
    elif case == "face":
        g = sign(dataclasses.replace(grant, allow_face=False), signing_keys)
    d = _check(g, signing_keys, **kw)
    assert not d.allowed
    assert words in d.reason
    assert dict(d.conditions) == {}


def test_voice_allowed_with_voice_grant(grant, signing_keys):
    both = sign(dataclasses.replace(grant, allow_voice=True), signing_keys)
    assert _check(both, signing_keys, want_voice=True).allowed


def test_pure_same_answer(grant, signing_keys, tmp_path):
    """The arguments alone decide: equal arguments built apart give equal decisions,
    whatever was decided before, and the wall clock plays no part (only ``now``)."""
    first = _check(grant, signing_keys)
    refused = _check(grant, signing_keys, revoked=True)
    assert first.allowed and not refused.allowed
    # Equal, separately built arguments: a rebuilt grant, the keys read again from disk.
    rebuilt = Grant(**{f.name: getattr(grant, f.name) for f in dataclasses.fields(Grant)})
    keys_again = SigningKeys.load(tmp_path / "signing")
    assert rebuilt == grant and rebuilt is not grant and keys_again is not signing_keys
    assert _check(rebuilt, keys_again) == first
    assert _check(rebuilt, keys_again, revoked=True) == refused
    # No memory of earlier calls: after refusals of the same grant it is allowed again,
    # and after allowing it the same refusal comes back.
    for kw in ({"revoked": True}, {"avatar_id": "b" * 64}, {"now": grant.expires_at}):
        assert not _check(grant, signing_keys, **kw).allowed
        assert _check(grant, signing_keys) == first
        assert _check(grant, signing_keys, **kw) == _check(rebuilt, keys_again, **kw)
    # ``now`` is the only clock: a grant long expired by the wall clock is allowed at a
    # ``now`` before its end, and one far in the future is refused at its ``now`` of expiry.
    past = dataclasses.replace(
        grant,
        issued_at=datetime(1999, 1, 1, tzinfo=UTC),
        expires_at=datetime(2000, 1, 1, tzinfo=UTC),
    )
    past = sign(past, signing_keys)
    assert _check(past, signing_keys, now=datetime(1999, 6, 1, tzinfo=UTC)).allowed
    assert not _check(grant, signing_keys, now=grant.expires_at).allowed
    # The arguments come out as they went in.
    keys = dict(signing_keys.public_keys())
    _check(grant, signing_keys, keys_public=keys)
    assert keys == dict(signing_keys.public_keys()) and rebuilt == grant
