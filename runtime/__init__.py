"""Runtime: config, CLI, sessions, pipeline, frames, dialogue, metrics.

The runtime composes ``voice``, ``avatar`` and ``consent``; nothing imports it back.
"""

from runtime.errors import LikenessError

__all__ = ["LikenessError"]
