"""What a liveness check decides: one :class:`Point` per check, in plain words, and the
:class:`LivenessResult` that holds them. Shared by the clip check
(:mod:`consent.liveness.verify`) and the live ceremony (:mod:`consent.ceremony`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

POINTS = ("digits", "head_turns", "lip_sync", "identity", "nonce")


@dataclass(frozen=True, slots=True)
class Point:
    """One checked point.

    Attributes:
        name: one of :data:`POINTS` (or "clip" when the upload could not be read).
        passed: whether it holds.
        score: the measured figure compared with its threshold (digits: share of the
            code heard right; head_turns: share of the asked turns made in order;
            lip_sync: correlation; identity: embedding distance; nonce: 1 or 0).
        reason: plain words for the person, also when it passed.
    """

    name: str
    passed: bool
    score: float
    reason: str


def sentence(text: str) -> str:
    """``text`` as a sentence for the person: capitalised, ending in a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True, slots=True)
class LivenessResult:
    """The server's decision on one clip.

    Attributes:
        passed: every point passed.
        points: the points in :data:`POINTS` order.
        timings: seconds per stage ("decode", "faces", "embed", "asr", "total").
    """

    passed: bool
    points: tuple[Point, ...]
    timings: dict[str, float] = field(default_factory=dict)

    def point(self, name: str) -> Point:
        """The point called ``name`` (KeyError when it was not checked)."""
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def failures(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if not p.passed)

    def explain(self) -> str:
        """Every failed point's reason, one per line (empty when it passed)."""
        return "\n".join(f"{p.name}: {p.reason}" for p in self.failures)


__all__ = ["POINTS", "LivenessResult", "Point", "sentence"]
