"""What one live ceremony asks, and when: digit groups, head turns, screen flashes.

A ceremony is planned when the person opens it, but revealed one prompt at a time
(:class:`consent.ceremony.engine.Ceremony` decides the moments), so a recording made
beforehand cannot know it. The flash colours are derived from the nonce (HMAC-free:
the nonce itself is secret until the ceremony starts, and only its hash is stored),
the digits, turn order and waits come from ``secrets`` (or a seeded ``random.Random``
in tests and benchmarks).

Life of a plan::

    plan = plan_ceremony(nonce)            # server side, never sent whole
    prompt = plan.prompts[i]               # sent over the data channel when due
    prompt.to_json()                       # {"type": "prompt", "id": 3, "kind": "turn", ...}
"""

from __future__ import annotations

import hashlib
import random
import secrets
from dataclasses import dataclass
from typing import Literal

from voice.digits import draw_code

Kind = Literal["flash", "digits", "turn"]
Turn = Literal["left", "right"]

# Saturated colours a screen can show and skin reflects differently per channel.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 255),
)
FLASHES = 8
# Each colour stays 340-500 ms: at most three changes a second, under WCAG 2.3.1's
# limit of three flashes a second for large saturated flashes (photosensitive epilepsy;
# the screen fills with saturated red among others). Shorter flashes would judge no
# better: a 15 fps camera sees 5-7 frames of each.
FLASH_MS = (340, 500)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One thing the page shows the person.

    Attributes:
        id: its position in the ceremony (0, 1, ...), echoed by the page's ``shown``.
        kind: "flash" (the page fills the screen with ``colors``), "digits" (read
            ``digits`` aloud) or "turn" (turn the head to ``direction``: the person's
            own left or right).
        digits: the group to read, 2 or 3 digits ("47").
        direction: "left" or "right" for a turn.
        colors: the flash colours (RGB 0..255), shown one after another.
        durations_ms: how long each colour stays, 340..500 ms (:data:`FLASH_MS`).
    """

    id: int
    kind: Kind
    digits: str = ""
    direction: str = ""
    colors: tuple[tuple[int, int, int], ...] = ()
    durations_ms: tuple[int, ...] = ()

    @property
    def flash_s(self) -> float:
        """Seconds the flash sequence lasts (0 for other prompts)."""
        return sum(self.durations_ms) / 1000.0

    def text(self) -> str:
        """Plain words for the person."""
        if self.kind == "digits":
            return "Read aloud: " + " ".join(self.digits)
        if self.kind == "turn":
            return f"Turn your head to your {self.direction}, then back"
        return "Look at the screen"

    def to_json(self) -> dict:
        """The data-channel message that reveals this prompt."""
        body: dict = {"type": "prompt", "id": self.id, "kind": self.kind, "text": self.text()}
        if self.kind == "digits":
            body["digits"] = self.digits
        elif self.kind == "turn":
            body["direction"] = self.direction
        else:
            body["colors"] = [list(c) for c in self.colors]
            body["durations_ms"] = list(self.durations_ms)
        return body

    @classmethod
    def from_json(cls, body: dict) -> Prompt:
        """The prompt a page received (the inverse of :meth:`to_json`).

        Raises:
            KeyError, ValueError, TypeError: not a prompt message.
        """
        return cls(
            int(body["id"]),
            body["kind"],
            digits=str(body.get("digits", "")),
            direction=str(body.get("direction", "")),
            colors=tuple((int(r), int(g), int(b)) for r, g, b in body.get("colors", ())),
            durations_ms=tuple(int(ms) for ms in body.get("durations_ms", ())),
        )

    def screen_at(self, dt: float) -> tuple[float, float, float]:
        """The flash colour (0..1 per channel) ``dt`` seconds after the sequence began;
        black before and after it."""
        if self.kind != "flash" or dt < 0:
            return (0.0, 0.0, 0.0)
        edge = 0.0
        for color, ms in zip(self.colors, self.durations_ms, strict=True):
            edge += ms / 1000.0
            if dt < edge:
                return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)
        return (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class CeremonyPlan:
    """Everything one ceremony will ask, in order (kept on the server).

    Attributes:
        nonce: the ceremony's single-use secret.
        prompts: flash first, then the digit groups, then the turns.
    """

    nonce: str
    prompts: tuple[Prompt, ...]

    @property
    def digits(self) -> str:
        """The whole code, all groups joined."""
        return "".join(p.digits for p in self.prompts if p.kind == "digits")

    @property
    def turns(self) -> tuple[str, ...]:
        return tuple(p.direction for p in self.prompts if p.kind == "turn")


def flash_sequence(
    nonce: str, count: int = FLASHES
) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
    """The flash colours and durations derived from ``nonce`` (deterministic).

    Consecutive colours always differ, so every step changes the light.
    """
    stream = hashlib.sha256(b"likeness-flash:" + nonce.encode()).digest()
    while len(stream) < 2 * count:
        stream += hashlib.sha256(stream).digest()
    colors: list[tuple[int, int, int]] = []
    durations: list[int] = []
    for i in range(count):
        choice = stream[2 * i] % len(PALETTE)
        if colors and PALETTE[choice] == colors[-1]:
            choice = (choice + 1 + stream[2 * i] % (len(PALETTE) - 1)) % len(PALETTE)
        colors.append(PALETTE[choice])
        low, high = FLASH_MS
        durations.append(low + stream[2 * i + 1] * (high - low) // 255)
    return tuple(colors), tuple(durations)


def plan_ceremony(
    nonce: str | None = None,
    rng: random.Random | None = None,
    groups: int = 3,
    turns: int = 2,
) -> CeremonyPlan:
    """A new ceremony: one flash sequence, ``groups`` digit groups, ``turns`` turns.

    Args:
        nonce: the ceremony's secret (None draws one from ``secrets``).
        rng: where digits and turns come from (None: ``secrets``; seeded in tests).
        groups: digit groups of 2-3 digits each (2..4, so 6..12 digits in all, at
            least 6).
        turns: head turns (2..4); both directions always appear.

    Raises:
        ValueError: counts outside those ranges.
    """
    if not 2 <= groups <= 4:
        raise ValueError(f"plan_ceremony: groups must be 2..4, got {groups}")
    if not 2 <= turns <= 4:
        raise ValueError(f"plan_ceremony: turns must be 2..4, got {turns}")
    rng = rng or secrets.SystemRandom()
    nonce = nonce or secrets.token_urlsafe(24)
    sizes = [rng.choice((2, 3)) for _ in range(groups)]
    while sum(sizes) < 6:
        sizes[sizes.index(2)] = 3
    prompts: list[Prompt] = []
    colors, durations = flash_sequence(nonce)
    prompts.append(Prompt(0, "flash", colors=colors, durations_ms=durations))
    for size in sizes:
        code = draw_code(rng, size)
        prompts.append(Prompt(len(prompts), "digits", digits=code))
    while True:
        order = [rng.choice(("left", "right")) for _ in range(turns)]
        if len(set(order)) == 2:
            break
    for direction in order:
        prompts.append(Prompt(len(prompts), "turn", direction=direction))
    return CeremonyPlan(nonce, tuple(prompts))


__all__ = [
    "FLASHES",
    "PALETTE",
    "CeremonyPlan",
    "Kind",
    "Prompt",
    "Turn",
    "flash_sequence",
    "plan_ceremony",
]
