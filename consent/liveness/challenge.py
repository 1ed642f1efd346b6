"""Liveness challenges: a code to read aloud, head turns in a random order, a nonce.

Life of a challenge::

    book = InMemoryNonceBook()
    challenge = issue_challenge(now=time.time())
    book.register(challenge)          # the server keeps it; the browser shows it
    ...                               # the person records and uploads the clip
    verdict = book.consume(challenge.nonce, now=time.time())
    if not verdict: print(verdict.reason)   # unknown, already used or expired

A nonce is single use: ``consume`` marks it used whatever the clip later shows, so a
failed attempt needs a new challenge. :class:`NonceBook` is the contract a database
backed book will implement; :class:`InMemoryNonceBook` serves one process.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from voice.digits import draw_code

Turn = Literal["left", "right"]
MIN_TTL_S = 60.0
MAX_TTL_S = 120.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """What the person must do in one clip.

    Attributes:
        nonce: single-use identifier (``secrets.token_urlsafe``), not guessable.
        digits: the code to read aloud, 6 to 8 digits ("4729135").
        turns: head turns in the order asked; "left" is the person's own left.
        issued_at: seconds since the epoch when it was issued.
        expires_at: seconds since the epoch after which it is refused.
    """

    nonce: str
    digits: str
    turns: tuple[Turn, ...]
    issued_at: float
    expires_at: float

    def instructions(self) -> str:
        """The plain-words prompt to show the person."""
        spoken = " ".join(self.digits)
        order = ", then ".join(self.turns)
        return (
            f"Read this code aloud: {spoken}. Then turn your head {order}, "
            "coming back to face the camera after each turn."
        )


def issue_challenge(
    rng: random.Random | None = None,
    ttl_s: float = 90.0,
    digits: tuple[int, int] = (6, 8),
    turns: int = 3,
    now: float | None = None,
) -> Challenge:
    """A new random challenge. Register it in a :class:`NonceBook` before showing it.

    Args:
        rng: source of the digits and turns (a seeded ``random.Random`` in tests);
            the nonce always comes from ``secrets``.
        ttl_s: seconds until it expires, 60 to 120.
        digits: (fewest, most) digits in the code, within 6..8.
        turns: how many head turns (2 to 5); both directions always appear.
        now: issue time (seconds since the epoch); None reads the clock.

    Raises:
        ValueError: an argument outside the ranges above.
    """
    rng = rng or secrets.SystemRandom()
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"issue_challenge: ttl_s must be {MIN_TTL_S:.0f}..{MAX_TTL_S:.0f}")
    low, high = digits
    if not 6 <= low <= high <= 8:
        raise ValueError(f"issue_challenge: digits must lie within 6..8, got {digits}")
    if not 2 <= turns <= 5:
        raise ValueError(f"issue_challenge: turns must be 2..5, got {turns}")
    count = rng.randint(low, high)
    code = draw_code(rng, count)
    while True:
        order = tuple(rng.choice(("left", "right")) for _ in range(turns))
        if len(set(order)) == 2:
            break
    issued = time.time() if now is None else float(now)
    return Challenge(
        nonce=secrets.token_urlsafe(24),
        digits=code,
        turns=order,  # type: ignore[arg-type]
        issued_at=issued,
        expires_at=issued + ttl_s,
    )


@dataclass(frozen=True, slots=True)
class NonceVerdict:
    """The answer of :meth:`NonceBook.consume`; true only when the nonce was accepted.

    Attributes:
        ok: the nonce was known, unused and unexpired, and is now used.
        reason: plain words for the person ("This challenge was already used").
    """

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


class NonceBook(Protocol):
    """Where issued challenges wait for their single use (a database later)."""

    def register(self, challenge: Challenge) -> None:
        """Remember ``challenge`` as issued and unused."""
        ...

    def consume(self, nonce: str, now: float) -> NonceVerdict:
        """Use ``nonce`` once: accepted at most once, and only before it expires."""
        ...


class InMemoryNonceBook:
    """A :class:`NonceBook` in this process's memory (thread-safe).

    Expired entries are forgotten ``keep_s`` seconds after their expiry, so a replay
    later than that reads "unknown" rather than "already used" (still refused).
    """

    def __init__(self, keep_s: float = 3600.0) -> None:
        self._keep_s = keep_s
        self._entries: dict[str, tuple[float, bool]] = {}  # nonce -> (expires_at, used)
        self._lock = threading.Lock()

    def register(self, challenge: Challenge) -> None:
        with self._lock:
            if challenge.nonce in self._entries:
                raise ValueError("this nonce was already registered")
            self._entries[challenge.nonce] = (challenge.expires_at, False)

    def consume(self, nonce: str, now: float) -> NonceVerdict:
        with self._lock:
            self._purge(now)
            entry = self._entries.get(nonce)
            if entry is None:
                return NonceVerdict(False, "This challenge is unknown to the server: start again.")
            expires_at, used = entry
            if used:
                return NonceVerdict(
                    False, "This challenge was already used once: ask for a new one."
                )
            self._entries[nonce] = (expires_at, True)
            if now > expires_at:
                return NonceVerdict(
                    False,
                    f"This challenge expired {now - expires_at:.0f} s before the clip "
                    "arrived: ask for a new one and record within the time shown.",
                )
            return NonceVerdict(True, "The challenge was fresh and used for the first time.")

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        stale = [n for n, (exp, _) in self._entries.items() if now > exp + self._keep_s]
        for nonce in stale:
            del self._entries[nonce]


__all__ = [
    "MAX_TTL_S",
    "MIN_TTL_S",
    "Challenge",
    "InMemoryNonceBook",
    "NonceBook",
    "NonceVerdict",
    "Turn",
    "issue_challenge",
]
