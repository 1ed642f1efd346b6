"""Errors raised by the avatar package (hierarchy in ``avatar/__init__.py``)."""

from __future__ import annotations


class AvatarError(Exception):
    """Root of every error raised by ``avatar``."""

    retryable: bool = False


class ImageInputError(AvatarError, ValueError):
    """The image cannot be used: unreadable, corrupt, empty, wrong shape."""


class FaceNotFoundError(AvatarError, ValueError):
    """No usable face in the image. The message says why (none, too small, profile...)."""


class ModelNotFoundError(AvatarError, FileNotFoundError):
    """A face model is missing. The message names it and how to install it."""


class GeneratorError(AvatarError, RuntimeError):
    """A generator failed while working.

    Args:
        message: what failed.
        retryable: True when the same call may succeed if repeated.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
