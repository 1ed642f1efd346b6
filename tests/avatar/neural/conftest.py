"""Fixtures of the neural model tests: tiny generators with seeded weights."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from avatar.models import DualBranchGenerator, GeneratorConfig
from tests.avatar import contract
from tests.avatar.neural.helpers import make_generator
from tests.conftest import espeak_wav


@pytest.fixture(scope="module")
def tiny() -> GeneratorConfig:
    return GeneratorConfig.tiny()


@pytest.fixture(scope="module")
def gen(tiny) -> DualBranchGenerator:
    """A tiny teacher generator; tests must not change its weights or backends."""
    return make_generator(tiny)


@pytest.fixture(scope="module")
def student(tiny) -> DualBranchGenerator:
    """A tiny student generator (say-weight embedding)."""
    return make_generator(tiny.as_student(), seed=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: one torch thread is several times faster than two here (use it
    per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> contract.Speech:
    """eSpeak NG reading one sentence (~3 s): the speech the pipeline and pool tests stream."""
    path = espeak_wav(
        "I would like to hear a story about the sea, please.",
        tmp_path_factory.mktemp("speech") / "story.wav",
    )
    pcm, rate = sf.read(path, dtype="float32")
    return contract.Speech(pcm, rate)
