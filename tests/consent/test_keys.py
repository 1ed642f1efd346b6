"""Signing keys (permissions, rotation) and per-subject data keys (crypto-shredding)."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from consent.errors import DecryptError, KeyFileError, KeyPermissionError, ShreddedError
from consent.grants import sign, verify_signature
from consent.keys import SigningKeys, SubjectKeys, key_id_of
from consent.watermark_key import WatermarkKey
from tests.consent.samples import make_grant


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_grant = make_grant


def test_signing_key_created_private(tmp_path):
    keys = SigningKeys.load(tmp_path / "k")
    assert _mode(tmp_path / "k") == 0o700
    files = list((tmp_path / "k").iterdir())
    assert files and all(_mode(f) == 0o600 for f in files)
    assert keys.key_id == key_id_of(keys.public_keys()[keys.key_id])
    assert len(keys.key_id) == 16
    assert SigningKeys.load(tmp_path / "k").key_id == keys.key_id  # reloads the same key


def test_loose_key_file_refused(tmp_path):
    keys = SigningKeys.load(tmp_path / "k")
    key_file = tmp_path / "k" / f"ed25519-{keys.key_id}.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        SigningKeys.load(tmp_path / "k")


def test_loose_key_dir_refused(tmp_path):
    SigningKeys.load(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o755)
    with pytest.raises(KeyPermissionError, match="chmod 700"):
        SigningKeys.load(tmp_path / "k")


def test_loose_master_key_refused(tmp_path):
    SubjectKeys.load(tmp_path / "d")
    os.chmod(tmp_path / "d" / "master.key", 0o640)
    with pytest.raises(KeyPermissionError, match="master.key"):
        SubjectKeys.load(tmp_path / "d")


def test_rotation_keeps_old_grants_verifiable(tmp_path):
    keys = SigningKeys.load(tmp_path / "k")
    old = sign(_grant(), keys)
    old_id = keys.key_id
    new_id = keys.rotate()
    assert new_id != old_id and keys.key_id == new_id
    assert not (tmp_path / "k" / f"ed25519-{old_id}.key").exists()  # old private key gone
    reloaded = SigningKeys.load(tmp_path / "k")
    assert reloaded.key_id == new_id
    assert set(reloaded.public_keys()) == {old_id, new_id}
    assert verify_signature(old, reloaded)
    fresh = sign(_grant(), reloaded)
    assert fresh.key_id == new_id and verify_signature(fresh, reloaded)


def test_subject_keys_round_trip_and_shred(tmp_path):
    keys = SubjectKeys.load(tmp_path / "d")
    blob = keys.encrypt("alice", b"embedding bytes")
    assert b"embedding bytes" not in blob
    assert keys.decrypt("alice", blob) == b"embedding bytes"
    with pytest.raises((DecryptError, ShreddedError)):
        keys.decrypt("bob", blob)  # bound to its subject
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptError):
        keys.decrypt("alice", tampered)
    assert keys.shred("alice") is True
    with pytest.raises(ShreddedError):
        keys.decrypt("alice", blob)
    keys.encrypt("alice", b"new consent, new key")  # a new key for new data...
    with pytest.raises(DecryptError):
        keys.decrypt("alice", blob)  # ...never opens the old data
    assert keys.shred("nobody") is False


def test_subject_key_files_are_private_and_named_by_hash(tmp_path):
    keys = SubjectKeys.load(tmp_path / "d")
    keys.encrypt("../../etc/passwd", b"x")
    files = list((tmp_path / "d" / "subjects").iterdir())
    assert len(files) == 1 and _mode(files[0]) == 0o600 and "passwd" not in files[0].name


def _node(root, start: threading.Barrier) -> tuple[str, str, SubjectKeys, bytes]:
    """What a node's start-up and first session make in a shared folder, all at once
    with another node: the signing key, the data keys (a subject's too), the watermark
    key. Returns the ids of the keys it uses, its data keys and what it encrypted."""
    start.wait()
    signing = SigningKeys.load(root / "signing")
    data = SubjectKeys.load(root / "keys")
    blob = data.encrypt("ann", b"embedding")
    return signing.key_id, WatermarkKey.load(root / "signing").key_id, data, blob


def _opens(keys: SubjectKeys, blob: bytes) -> bool:
    try:
        return keys.decrypt("ann", blob) == b"embedding"
    except (DecryptError, KeyFileError):
        return False


def test_two_nodes_making_the_keys_at_once_use_the_same_ones(tmp_path):
    """Nodes on one shared key folder may start at the same moment: of two making a key
    at once, both must use the same one. Each its own: a grant signed on one node would
    not verify on the other, data encrypted on one would not open on the other, and a
    node's frames would carry a watermark no key on disk can trace."""
    differed = []
    for n in range(20):
        root, start = tmp_path / str(n), threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(_node, [root, root], [start, start])
        if a[:2] != b[:2] or not (_opens(a[2], b[3]) and _opens(b[2], a[3])):
            differed.append(n)
    assert not differed, f"rounds {differed} of 20 left the nodes with different keys"
    leftovers = [f.name for f in tmp_path.rglob(".*.tmp")]
    assert not leftovers, leftovers
