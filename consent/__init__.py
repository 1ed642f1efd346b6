"""Consent: liveness, grants, audit and the gate (filled in by a later issue).

Hierarchy of errors::

    ConsentError   root of every error this package raises
"""


class ConsentError(Exception):
    """Root of every error raised by ``consent``."""

    retryable: bool = False


__all__ = ["ConsentError"]
