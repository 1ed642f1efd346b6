"""Errors raised by the consent package (hierarchy in ``consent/__init__.py``)."""

from __future__ import annotations

from consent import ConsentError


class KeyFileError(ConsentError, OSError):
    """A key file or key directory is missing, unreadable or malformed. The message names it."""


class KeyPermissionError(KeyFileError):
    """A key file or its directory can be read by group or others: fix the mode, then retry.

    The message names the path, its mode and the ``chmod`` that fixes it.
    """


class ShreddedError(ConsentError):
    """The subject's data key was destroyed (revoke): the data cannot be read, ever."""


class DecryptError(ConsentError, ValueError):
    """Ciphertext was altered, truncated, or was not made for this subject."""


class GrantError(ConsentError, ValueError):
    """A grant cannot be made or used as asked. The message says which field is wrong."""


class LivenessRequiredError(GrantError):
    """Issuing needs a passed, fresh, unused liveness record of the same subject and avatar
    (or a guardian with a recorded basis). Run the liveness challenge again."""


class NotFoundError(ConsentError, LookupError):
    """No subject, avatar, grant or liveness record with that id."""


class AlreadyRevokedError(ConsentError):
    """The grant was already revoked. Revocation cannot be undone: issue a new grant."""


class StoreError(ConsentError, RuntimeError):
    """The database failed.

    Args:
        message: what failed.
        retryable: True when the same call may succeed if repeated (connection lost,
            lock timeout, serialization failure); False for schema or data errors.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


__all__ = [
    "AlreadyRevokedError",
    "ConsentError",
    "DecryptError",
    "GrantError",
    "KeyFileError",
    "KeyPermissionError",
    "LivenessRequiredError",
    "NotFoundError",
    "ShreddedError",
    "StoreError",
]
