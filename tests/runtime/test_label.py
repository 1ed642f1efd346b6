"""The visible AI label on session frames."""

from __future__ import annotations

import numpy as np

from avatar.synthetic import make_demo_avatar
from runtime.label import AiLabel


def test_label_marks_only_its_corner_and_never_the_original():
    face = make_demo_avatar().image
    original = face.copy()
    label = AiLabel(face.shape[0])
    out = label.apply(face)
    np.testing.assert_array_equal(face, original)  # the generator's image is untouched
    rows, cols = label.box()
    outside = np.ones(face.shape[:2], bool)
    outside[rows, cols] = False
    np.testing.assert_array_equal(out[outside], face[outside])
    patch = out[rows, cols].astype(int)
    assert (patch.max(axis=2) > 200).sum() > 50, "white text"
    assert (patch.max(axis=2) < 80).sum() > 200, "on a dark backing"
    assert rows.stop <= face.shape[0] and cols.start >= 0


def test_label_sizes_with_the_frame():
    small, big = AiLabel(256), AiLabel(1024)
    assert big.width > small.width and big.height > small.height
