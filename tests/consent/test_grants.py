"""Grant signing: canonical bytes, altered fields, forged signatures, unknown keys."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from consent.errors import GrantError
from consent.grants import Grant, canonical_bytes, sign, verify_signature
from consent.keys import SigningKeys
from tests.consent.samples import NOW, make_grant

_grant = make_grant


# One altered value per signed field.
ALTERED = {
    "id": "g2",
    "subject": "s2",
    "avatar_id": "b" * 64,
    "allow_face": False,
    "allow_voice": True,
    "deployments": ("kiosk", "browser"),
    "purposes": ("companionship",),
    "expires_at": NOW + timedelta(days=1, microseconds=1),
    "issued_at": NOW - timedelta(seconds=1),
    "conditions": {"ai_label": False},
    "granted_by": "guardian:g7",
    "basis": "court order 42",
    "liveness_id": "l2",
    "key_id": "0" * 16,
}


def test_every_field_is_covered():
    names = {f.name for f in dataclasses.fields(Grant)} - {"signature"}
    assert names == set(ALTERED)


def test_canonical_bytes_are_stable(tmp_path):
    a = _grant(deployments=("b", "a"), conditions={"z": 1, "a": 2})
    b = _grant(deployments=("a", "b"), conditions={"a": 2, "z": 1})
    assert canonical_bytes(a) == canonical_bytes(b)
    text = canonical_bytes(a).decode()
    assert " " not in text and '"expires_at":"2030-01-02T12:00:00.000000Z"' in text


def test_signed_grant_verifies(signing_keys):
    signed = sign(_grant(), signing_keys)
    assert signed.key_id == signing_keys.key_id and len(signed.signature) == 64
    assert verify_signature(signed, signing_keys)
    assert verify_signature(signed, signing_keys.public_keys())


@pytest.mark.parametrize("field", sorted(ALTERED))
def test_any_altered_field_fails(signing_keys, field):
    signed = sign(_grant(), signing_keys)
    changes = {field: ALTERED[field]}
    if field == "granted_by":
        changes["basis"] = "power of attorney"
    if field == "basis":
        changes["granted_by"] = "guardian:g7"
    altered = dataclasses.replace(signed, **changes)
    assert not verify_signature(altered, signing_keys)


def test_forged_signature_fails(signing_keys, tmp_path):
    signed = sign(_grant(), signing_keys)
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    assert not verify_signature(dataclasses.replace(signed, signature=flipped), signing_keys)
    assert not verify_signature(dataclasses.replace(signed, signature=b""), signing_keys)
    assert not verify_signature(dataclasses.replace(signed, signature=b"\0" * 64), signing_keys)
    # Signed by another server's key that claims our key id.
    other = SigningKeys.load(tmp_path / "other")
    forged = sign(_grant(), other)
    forged = dataclasses.replace(forged, key_id=signing_keys.key_id)
    assert not verify_signature(forged, signing_keys)


def test_unknown_key_fails(signing_keys, tmp_path):
    other = SigningKeys.load(tmp_path / "other")
    assert not verify_signature(sign(_grant(), other), signing_keys)


@pytest.mark.parametrize(
    "changes",
    [
        {"expires_at": datetime(2030, 1, 1)},  # naive
        {"granted_by": "guardian:g1"},  # no basis
        {"granted_by": "someone"},
        {"basis": "x"},  # basis without guardian
        {"deployments": ()},
        {"purposes": ("",)},
        {"conditions": {"f": object()}},
        {"allow_face": 1},
    ],
)
def test_invalid_grants_refused(changes):
    with pytest.raises(GrantError):
        _grant(**changes)
