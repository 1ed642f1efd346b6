"""Checkpoints: safetensors weights with the config embedded as JSON in the metadata.

A checkpoint is one ``.safetensors`` file; :func:`save_pretrained` given a folder writes
``<folder>/model.safetensors``. Its metadata holds:

- ``likeness.class``: the model class that wrote it (``DualBranchGenerator``, ...);
- ``likeness.config_version``: :data:`~avatar.models.config.CONFIG_VERSION`;
- ``likeness.config``: the config as JSON (:func:`~avatar.models.config.config_to_dict`).

Loading checks all three and every tensor's name and shape before touching the model, and
says plainly what is wrong (:class:`~avatar.models.errors.CheckpointError`); a missing
file raises :class:`~avatar.errors.ModelNotFoundError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from avatar.errors import ModelNotFoundError
from avatar.models.config import CONFIG_VERSION, config_from_dict, config_to_dict
from avatar.models.errors import CheckpointError, ModelConfigError

WEIGHTS_NAME = "model.safetensors"
KEY_CLASS = "likeness.class"
KEY_VERSION = "likeness.config_version"
KEY_CONFIG = "likeness.config"
_SHOW = 5  # how many offending names an error message lists


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights file a checkpoint path means: the path itself if it ends in
    ``.safetensors``, else ``<path>/model.safetensors``."""
    p = Path(path)
    return p if p.suffix == ".safetensors" else p / WEIGHTS_NAME


def save_pretrained(
    module: nn.Module, config: Any, path: str | os.PathLike[str], model_class: str
) -> Path:
    """Write ``module``'s weights and ``config`` to a checkpoint (atomically).

    Args:
        module: the model; its ``state_dict()`` is saved (on CPU, contiguous).
        config: its config dataclass.
        path: a folder (created if needed) or a ``.safetensors`` file path.
        model_class: the class name recorded in the file, checked on load.

    Returns:
        The file written. Load it with the model class's ``from_pretrained``.
    """
    file = weights_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    metadata = {
        KEY_CLASS: model_class,
        KEY_VERSION: str(CONFIG_VERSION),
        KEY_CONFIG: json.dumps(config_to_dict(config), sort_keys=True),
    }
    tmp = file.with_name(file.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, file)
    return file


def read_pretrained(
    path: str | os.PathLike[str], config_class: type, model_class: str
) -> tuple[Any, dict[str, Tensor]]:
    """Read a checkpoint's config and tensors, checking its class and config version.

    Returns:
        ``(config, state_dict)``; build the model from ``config``, then call
        :func:`load_state`.

    Raises:
        ModelNotFoundError: no file at the path.
        CheckpointError: not safetensors, no embedded config, another class, another
            config version, or a config that does not validate.
    """
    file = weights_path(path)
    if not file.is_file():
        raise ModelNotFoundError(
            f"no checkpoint at {file}: check the path, or write one with save_pretrained()"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file ({exc})") from None
    if KEY_CONFIG not in metadata:
        raise CheckpointError(
            f"{file} has no embedded likeness config: it was not written by save_pretrained()"
        )
    version = metadata.get(KEY_VERSION, "?")
    if version != str(CONFIG_VERSION):
        raise CheckpointError(
            f"{file} has config version {version}, this likeness reads version "
            f"{CONFIG_VERSION}: use the release that wrote it, or convert it"
        )
    found = metadata.get(KEY_CLASS, "?")
    if found != model_class:
        raise CheckpointError(f"{file} holds a {found}, not a {model_class}")
    try:
        config = config_from_dict(config_class, json.loads(metadata[KEY_CONFIG]))
    except (json.JSONDecodeError, ModelConfigError) as exc:
        raise CheckpointError(f"{file} has an unusable embedded config: {exc}") from None
    return config, state


def load_state(module: nn.Module, state: dict[str, Tensor], source: str | os.PathLike[str]):
    """Copy ``state`` into ``module`` after checking every name and shape.

    Raises:
        CheckpointError: weights missing from the file, unknown to the model, or of
            another shape; the message lists the first few of each.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mismatched),
    ):
        if names:
            more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
            problems.append(f"{label}: {', '.join(names[:_SHOW])}{more}")
    if problems:
        raise CheckpointError(
            f"{weights_path(source)} does not fit this model: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)
