"""Avatar: face analysis and video generators (filled in by later issues).

Hierarchy of errors::

    AvatarError   root of every error this package raises
"""


class AvatarError(Exception):
    """Root of every error raised by ``avatar``."""

    retryable: bool = False


__all__ = ["AvatarError"]
