"""Errors raised by the voice package.

Hierarchy::

    VoiceError                      root of every error this package raises
    ├── AudioInputError             unreadable, corrupt or unusable audio (bad input: exit 2)
    ├── ModelNotFoundError          a model is missing; the message says how to get it
    ├── BackendError                an engine failed at run time; see ``retryable``
    │   └── BackendUnavailableError the engine's package or system binary is not installed
    └── ConsentRequiredError        a voice clone was asked for without a voice consent

Callers catch ``VoiceError`` at the boundary (CLI, server) and report ``str(err)``.
"""

from __future__ import annotations


class VoiceError(Exception):
    """Root of every error raised by ``voice``."""

    retryable: bool = False


class AudioInputError(VoiceError, ValueError):
    """The audio given cannot be used (corrupt, empty, wrong shape)."""


class ModelNotFoundError(VoiceError, FileNotFoundError):
    """A model is missing. The message names it and says how to install it."""


class BackendError(VoiceError, RuntimeError):
    """An engine failed while working.

    Args:
        message: what failed.
        retryable: True when the same call may succeed if repeated.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BackendUnavailableError(BackendError):
    """The engine cannot run here: its package or system program is not installed."""


class ConsentRequiredError(VoiceError, PermissionError):
    """A cloned voice was asked for and the consent hook refused it."""
