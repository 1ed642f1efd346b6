"""Avatar: face analysis and video generators.

This package imports none of likeness's other packages: a generator takes audio
and timings (any objects with ``symbol``, ``kind``, ``start``, ``end``), never a
TTS object, and it is gated from outside — it never decides consent itself.

Hierarchy of errors (``avatar.errors``)::

    AvatarError             root of every error this package raises
    ├── ImageInputError     unreadable / unusable image (bad input: exit 2)
    ├── FaceNotFoundError   no usable face: none, too small, profile view (bad input: exit 2)
    ├── ModelNotFoundError  a face model is missing; the message says how to install it
    ├── GeneratorError      a generator failed at run time; ``retryable`` says if a retry may help
    ├── ModelConfigError    a neural model config is invalid (``avatar.models.errors``)
    ├── ModelInputError     tensors of the wrong shape or dtype given to a neural model
    ├── CheckpointError     a checkpoint file is unreadable, of another version, or mismatched
    ├── AudioFeatureError   audio the mel features cannot use (rate, dtype, channels)
    ├── VideoReadError      a training video cannot be decoded (``avatar.train.video``)
    └── PreprocessError     the training-data preprocessing cannot run (no videos, bad options)
"""

from avatar.errors import AvatarError

__all__ = ["AvatarError"]
