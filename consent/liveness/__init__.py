"""Liveness + identity check before a person may grant use of their face.

Flow: :func:`issue_challenge` → register it in a :class:`NonceBook` → the browser shows
``challenge.instructions()`` and uploads a clip → :func:`verify_clip` answers with a
:class:`LivenessResult` whose points explain every failure in plain words.
:mod:`consent.liveness.testclips` draws synthetic clips for tests (never for consent).
"""

from consent.liveness.challenge import (
    Challenge,
    InMemoryNonceBook,
    NonceBook,
    NonceVerdict,
    issue_challenge,
)
from consent.liveness.clip import Clip, ClipError, ClipOptions, read_clip
from consent.liveness.verify import (
    DIGITS_PROMPT,
    POINTS,
    LivenessOptions,
    LivenessResult,
    Point,
    asr_options,
    load_asr,
    verify_clip,
)

__all__ = [
    "DIGITS_PROMPT",
    "POINTS",
    "Challenge",
    "Clip",
    "ClipError",
    "ClipOptions",
    "InMemoryNonceBook",
    "LivenessOptions",
    "LivenessResult",
    "NonceBook",
    "NonceVerdict",
    "Point",
    "asr_options",
    "issue_challenge",
    "load_asr",
    "read_clip",
    "verify_clip",
]
