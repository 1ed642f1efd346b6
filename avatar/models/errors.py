"""Errors of the neural generator's models and samplers.

All of them are :class:`~avatar.errors.AvatarError` (and ``ValueError``), so the
runtime's mapping of bad input to exit code 2 applies::

    AvatarError
    ├── ModelConfigError   a config or option is invalid (names the field and the rule)
    ├── ModelInputError    a tensor handed to a model or sampler has the wrong shape,
    │                      dtype or values (names the argument, what was expected)
    └── CheckpointError    a checkpoint exists but cannot be used: not safetensors,
                           no embedded config, wrong config version, missing or
                           mismatched weights

A checkpoint path that does not exist raises :class:`avatar.errors.ModelNotFoundError`.
"""

from __future__ import annotations

from avatar.errors import AvatarError


class ModelConfigError(AvatarError, ValueError):
    """A config or option is invalid. Fix the named field; nothing was built."""


class ModelInputError(AvatarError, ValueError):
    """A tensor argument is unusable. The message names it and the expected shape."""


class CheckpointError(AvatarError, ValueError):
    """A checkpoint file is unusable. The message says which file and what is wrong."""
