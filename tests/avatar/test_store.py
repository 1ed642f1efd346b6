"""The prepared-avatar cache on disk."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.errors import AvatarError, ImageInputError
from avatar.store import AvatarStore
from avatar.types import Box, HeadPose, PreparedAvatar


def avatar(synthetic: bool = False, mesh: bool = False) -> PreparedAvatar:
    rng = np.random.default_rng(1)
    return PreparedAvatar(
        id="0123456789abcdef",
        image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        landmarks=rng.random((68, 2)).astype(np.float32) * 32,
        synthetic=synthetic,
        pose=HeadPose(5.0, -2.0, 1.0),
        source_box=Box(10, 20, 110, 120),
        warnings=("2 faces found; using the largest",),
        mesh=rng.random((468, 3)).astype(np.float32) * 32 if mesh else None,
    )


@pytest.mark.parametrize("mesh", [False, True], ids=["68 points", "mesh"])
def test_round_trip(tmp_path, mesh):
    store = AvatarStore(tmp_path)
    original = avatar(mesh=mesh)
    folder = store.save(original)
    assert (folder / "mesh.npy").is_file() == mesh
    assert original.id in store
    loaded = store.load(original.id)
    np.testing.assert_array_equal(loaded.image, original.image)
    np.testing.assert_allclose(loaded.landmarks, original.landmarks)
    assert (loaded.pose, loaded.source_box, loaded.warnings) == (
        original.pose,
        original.source_box,
        original.warnings,
    )
    if mesh:
        np.testing.assert_array_equal(loaded.mesh, original.mesh)
    else:
        assert loaded.mesh is None
    assert store.delete(original.id) and original.id not in store


def test_synthetic_avatars_are_never_stored(tmp_path):
    with pytest.raises(AvatarError, match="synthetic"):
        AvatarStore(tmp_path).save(avatar(synthetic=True))


def test_a_stored_avatar_never_loads_as_synthetic(tmp_path):
    store = AvatarStore(tmp_path)
    folder = store.save(avatar())
    meta = folder / "meta.json"
    meta.write_text(meta.read_text().replace('"warnings"', '"synthetic": true, "warnings"'))
    assert store.load("0123456789abcdef").synthetic is False


def test_bad_ids_and_damage(tmp_path):
    store = AvatarStore(tmp_path)
    for bad in ("../etc", "x", "0123456789ABCDEF/.."):
        with pytest.raises(ImageInputError):
            store.load(bad)
    with pytest.raises(ImageInputError, match="no prepared avatar"):
        store.load("00000000deadbeef")
    folder = store.save(avatar())
    (folder / "landmarks.npy").write_bytes(b"garbage")
    with pytest.raises(ImageInputError, match="damaged"):
        store.load("0123456789abcdef")
    folder = store.save(avatar(mesh=True))
    np.save(folder / "mesh.npy", np.zeros((468, 2), np.float32))
    with pytest.raises(ImageInputError, match="damaged: mesh"):
        store.load("0123456789abcdef")
