"""avatar.face.crop: the crop geometry and feather mask that training and inference share."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from avatar.face.crop import crop_matrix, feather_mask, feather_width, paste_alpha, to_crop

INFERENCE = (
    "avatar.pipelines.neural",
    "avatar.pipelines.framing",
    "avatar.deploy.onnx_runner",
    "avatar.procedural",
    "avatar.face",
)


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_does_not_import_training(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('avatar.train')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"{module} imports {out.strip()}"


def test_feather_mask_is_one_inside_and_ramps_to_the_edges():
    mask = feather_mask(64, feather_width(64))  # 4 px of soft edge
    assert mask.dtype == np.float32 and mask.shape == (64, 64)
    assert np.all(mask[4:60, 4:60] == 1.0)
    assert 0.0 < mask[0, 32] < mask[1, 32] < mask[2, 32] < mask[3, 32] < 1.0
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask.T)


def test_paste_alpha_is_the_mask_where_the_crop_lies_and_zero_elsewhere():
    box = np.array([50.5, 40.5, 32.0])  # crop pixel (0, 0) is frame pixel (35, 25)
    matrix = crop_matrix(box, 32)
    alpha = paste_alpha(matrix, 32, (120, 100), 4.0)
    assert alpha.shape == (100, 120)
    assert np.all(alpha[:25] == 0) and np.all(alpha[57:] == 0)
    assert np.all(alpha[:, :35] == 0) and np.all(alpha[:, 67:] == 0)
    assert np.allclose(alpha[25:57, 35:67], feather_mask(32, 4.0), atol=1e-6)
    # Points move into the crop with the same matrix the pixels use.
    point = np.array([41.25, 30.5])
    assert np.allclose(to_crop(point, box, 32), matrix[:, :2] @ point + matrix[:, 2], atol=1e-5)
