"""Errors raised by the runtime package.

Hierarchy::

    LikenessError                 root of every error the runtime raises
    ├── ConfigError               bad or unknown configuration key; names the key (exit 2)
    ├── InputError                bad input given on the command line or API (exit 2)
    ├── DialogueError             an LLM backend failed; ``retryable`` tells the retry point
    │   └── DialogueTimeoutError  no token within the configured time
    └── SafetyError               a distress alert could not be delivered (runtime.safety)

Errors of the other packages have their own roots (``voice.VoiceError``,
``avatar.AvatarError``, ``consent.ConsentError``); the CLI maps all of them.
"""

from __future__ import annotations


class LikenessError(Exception):
    """Root of every error raised by ``runtime``."""

    retryable: bool = False


class ConfigError(LikenessError, ValueError):
    """The configuration is invalid. The message starts with the key at fault."""


class InputError(LikenessError, ValueError):
    """Input from the user or a client is unusable."""


class DialogueError(LikenessError, RuntimeError):
    """A dialogue backend failed.

    Args:
        message: what failed (never includes secrets such as API keys).
        retryable: True for transient failures (timeouts, 429, 5xx, dropped streams).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DialogueTimeoutError(DialogueError):
    """The backend sent nothing within the configured timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)
