"""Checkpoints: safetensors with the config embedded; bit-identical round trips; plain-words
errors for files that cannot be used."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from avatar.errors import ModelNotFoundError
from avatar.models import CheckpointError, DualBranchGenerator, GeneratorConfig, ModelConfigError
from avatar.models.checkpoint import KEY_CLASS, KEY_CONFIG, KEY_VERSION
from avatar.models.config import config_from_dict, config_to_dict
from avatar.samplers import (
    FlowMatchingStudent,
    FlowMatchingTeacher,
    StudentOptions,
    TeacherOptions,
    generate_motion,
)
from tests.avatar.neural.helpers import make_generator, reference_images, speech_mel


@torch.inference_mode()
def _outputs(model: DualBranchGenerator) -> list[torch.Tensor]:
    avatar = model.encode_avatar(reference_images(1, model.config.image_size, seed=2))
    ctx = avatar.source_code[:, None].repeat(1, model.config.dit.context_frames, 1)
    sampler = (
        FlowMatchingStudent(StudentOptions(steps=2))
        if model.config.dit.guidance_embed
        else FlowMatchingTeacher(TeacherOptions(steps=3))
    )
    mel = speech_mel(1, 80)
    codes = generate_motion(model, sampler, mel, avatar.id_tokens, seed=1, context=ctx)
    return [*avatar.pyramid, avatar.id_tokens, codes, model.render(avatar, codes[:, :3])]


@pytest.mark.parametrize("student", [False, True])
def test_round_trip_is_bit_identical_with_the_config_embedded(tmp_path, tiny, student):
    config = tiny.as_student() if student else tiny
    model = make_generator(config, seed=3)
    file = model.save_pretrained(tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta[KEY_CLASS] == "DualBranchGenerator" and meta[KEY_VERSION] == "2"
    assert config_from_dict(GeneratorConfig, json.loads(meta[KEY_CONFIG])) == config
    assert names == set(model.state_dict())  # buffers such as code_mean travel too

    loaded = DualBranchGenerator.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == config and not loaded.training
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        assert torch.equal(a, b)
    # A .safetensors path works as well as a folder.
    single = model.save_pretrained(tmp_path / "one.safetensors")
    assert single.name == "one.safetensors"
    assert DualBranchGenerator.from_pretrained(single).config == config


def test_config_dict_round_trip_and_errors(tiny):
    for config in (tiny, GeneratorConfig.base(), GeneratorConfig.large(), tiny.as_student()):
        data = json.loads(json.dumps(config_to_dict(config)))
        assert config_from_dict(GeneratorConfig, data) == config
    data = config_to_dict(tiny)
    data["dit"]["colour"] = "blue"
    with pytest.raises(ModelConfigError, match=r"dit has unknown field\(s\): colour"):
        config_from_dict(GeneratorConfig, data)
    data = config_to_dict(tiny)
    data["dit"]["width"] = "32"
    with pytest.raises(ModelConfigError, match="GeneratorConfig.dit.width must be int, got '32'"):
        config_from_dict(GeneratorConfig, data)
    data = config_to_dict(tiny)
    data["appearance"]["channels"] = [16, 24.5]
    with pytest.raises(ModelConfigError, match="appearance.channels must be a list of int"):
        config_from_dict(GeneratorConfig, data)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no checkpoint at .*model.safetensors"):
        DualBranchGenerator.from_pretrained(tmp_path / "nowhere")


def _save_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    """A valid tiny checkpoint's state and metadata, to break in various ways."""
    model = make_generator(tiny)
    file = model.save_pretrained(tmp_path_factory.mktemp("good"))
    with safe_open(str(file), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"this is a text file, not weights")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        DualBranchGenerator.from_pretrained(bad)
    truncated = tmp_path / "cut.safetensors"
    _save_raw(truncated, {"w": torch.zeros(1000)}, {})
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        DualBranchGenerator.from_pretrained(truncated)


def test_no_embedded_config(tmp_path, saved):
    state, _ = saved
    file = _save_raw(tmp_path / "plain.safetensors", state, {"format": "pt"})
    with pytest.raises(CheckpointError, match="no embedded likeness config"):
        DualBranchGenerator.from_pretrained(file)


def test_wrong_config_version_or_class(tmp_path, saved):
    state, meta = saved
    file = _save_raw(tmp_path / "v9.safetensors", state, {**meta, KEY_VERSION: "9"})
    with pytest.raises(CheckpointError, match="config version 9, this likeness reads version 2"):
        DualBranchGenerator.from_pretrained(file)
    # Version 1's motion encoder pooled one image-wide mean: its weights fit no more.
    file = _save_raw(tmp_path / "v1.safetensors", state, {**meta, KEY_VERSION: "1"})
    with pytest.raises(CheckpointError, match="config version 1, this likeness reads version 2"):
        DualBranchGenerator.from_pretrained(file)
    file = _save_raw(tmp_path / "other.safetensors", state, {**meta, KEY_CLASS: "SomethingElse"})
    with pytest.raises(CheckpointError, match="holds a SomethingElse, not a DualBranchGenerator"):
        DualBranchGenerator.from_pretrained(file)
    file = _save_raw(tmp_path / "badcfg.safetensors", state, {**meta, KEY_CONFIG: "{not json"})
    with pytest.raises(CheckpointError, match="unusable embedded config"):
        DualBranchGenerator.from_pretrained(file)


def test_weights_that_do_not_fit(tmp_path, saved, tiny):
    state, meta = saved
    name = "motion_dit.out.weight"
    wrong = {**state, name: torch.zeros(3, 3)}
    file = _save_raw(tmp_path / "shape.safetensors", wrong, meta)
    with pytest.raises(CheckpointError, match=rf"shape mismatch: {name} \(file \(3, 3\), model"):
        DualBranchGenerator.from_pretrained(file)
    missing = {k: v for k, v in state.items() if k != name}
    missing["extra.weight"] = torch.zeros(1)
    file = _save_raw(tmp_path / "missing.safetensors", missing, meta)
    with pytest.raises(CheckpointError, match=rf"missing: {name}; unexpected: extra.weight"):
        DualBranchGenerator.from_pretrained(file)
    # A config that does not match the weights: the student has an extra embedding.
    student_meta = {**meta, KEY_CONFIG: json.dumps(config_to_dict(tiny.as_student()))}
    file = _save_raw(tmp_path / "student.safetensors", state, student_meta)
    with pytest.raises(CheckpointError, match="missing: motion_dit.w_embed"):
        DualBranchGenerator.from_pretrained(file)
