"""Start-up warms the face model without animating a real person's face.

``Companion.load`` runs every stage once before ``/health`` says ready. The face
model's turn must use the synthetic face even when ``server.avatar`` is a real
person's prepared photo: no person is animated outside a session whose consent check
passed (here there is not even a grant).
"""

from __future__ import annotations

import pytest

from avatar.store import AvatarStore
from runtime import companion as companion_module
from runtime.companion import Companion
from runtime.config import load_config


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    from avatar.face import FaceAnalyzer
    from avatar.face.prepare import prepare_photo

    return prepare_photo(data.astronaut(), FaceAnalyzer.load(), size=256)


@pytest.mark.slow
async def test_start_up_warms_the_face_model_on_the_synthetic_face(
    astronaut, tmp_path, monkeypatch
):
    settings = load_config(data_dir=tmp_path, server={"avatar": astronaut.id})
    AvatarStore(settings.avatars_dir).save(astronaut)
    animated = []
    real = companion_module.avatar_generator

    def recording(settings, face, *args, **kwargs):
        animated.append(face)
        return real(settings, face, *args, **kwargs)

    monkeypatch.setattr(companion_module, "avatar_generator", recording)
    companion = Companion(settings)
    try:
        await companion.load()
    finally:
        await companion.shutdown()
    assert animated, "the warm-up built no face generator"
    assert all(face.synthetic for face in animated), [face.id for face in animated]
