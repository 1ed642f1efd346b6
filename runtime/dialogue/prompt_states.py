"""Saved llama.cpp prompt states: a person's evaluated history, kept between turns.

llama-cpp-python reuses the longest common token prefix of the context it evaluated
last, and only that one. With several people on one model, or a history trimmed at
the front, that prefix is lost and the whole history is evaluated again on the turn,
which took seconds on 2 cores. :class:`PromptStates` keeps, per conversation slot
(one person), the KV memory of the prompt it evaluated last, plus a few *shared*
states that hold nothing but a persona's system prompt.

Leak-proof by construction: a lookup for slot ``s`` sees only ``s``'s own state and
the shared persona states (which the backend stores only for system-only prompts),
and whatever is reused is the part whose tokens equal the new prompt's own tokens,
so one person's history can never reach another's prompt. Bounded: states are
evicted least recently used once their bytes pass the capacity; shared states are
few (at most :data:`MAX_SHARED`) and kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import ConfigError

MAX_SHARED = 8  # one per persona (default and kiosk profiles); more is a misuse


@dataclass(frozen=True, slots=True)
class SavedState:
    """The KV memory of sequence 0 after evaluating ``tokens`` (llama_state_seq_get_data)."""

    tokens: tuple[int, ...]
    data: bytes


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptStates:
    """Per-slot and shared saved prompt states, bounded in bytes. Thread-safe.

    Args:
        capacity_bytes: most bytes kept in per-slot states; the least recently used go
            first (the newest state is kept even when it alone is larger).
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ConfigError(f"prompt state capacity must be >= 0 bytes, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._slots: OrderedDict[str, SavedState] = OrderedDict()
        self._shared: list[SavedState] = []
        self._forgotten: dict[str, int] = {}  # times each slot was forgotten
        self._lock = threading.Lock()

    @property
    def slot_bytes(self) -> int:
        """Bytes held by per-slot states now."""
        with self._lock:
            return sum(len(s.data) for s in self._slots.values())

    def slots(self) -> list[str]:
        """The slots with a saved state, least recently used first."""
        with self._lock:
            return list(self._slots)

    def epoch(self, slot: str) -> int:
        """How many times ``slot`` was forgotten; hand it to :meth:`put`."""
        with self._lock:
            return self._forgotten.get(slot, 0)

    def put(self, slot: str | None, state: SavedState, epoch: int = 0) -> None:
        """Keep ``state`` as ``slot``'s (None: a shared persona state, system prompt only).

        ``epoch`` is :meth:`epoch` from before the state was computed: a slot forgotten
        meanwhile (its person left while the state was being evaluated) stays empty.
        """
        with self._lock:
            if slot is not None and self._forgotten.get(slot, 0) != epoch:
                return
            if slot is None:
                if any(s.tokens == state.tokens for s in self._shared):
                    return
                if len(self._shared) >= MAX_SHARED:
                    self._shared.pop(0)
                self._shared.append(state)
                return
            self._slots.pop(slot, None)
            self._slots[slot] = state
            total = sum(len(s.data) for s in self._slots.values())
            while total > self.capacity_bytes and len(self._slots) > 1:
                _, old = self._slots.popitem(last=False)
                total -= len(old.data)

    def best(self, slot: str | None, tokens: Sequence[int]) -> tuple[SavedState | None, int]:
        """The state sharing the longest prefix with ``tokens`` among ``slot``'s own and
        the shared ones, and the length of that prefix (0 and None when none shares any)."""
        with self._lock:
            candidates = list(self._shared)
            if slot is not None and slot in self._slots:
                self._slots.move_to_end(slot)
                candidates.append(self._slots[slot])
        found, length = None, 0
        for state in candidates:
            n = common_prefix(state.tokens, tokens)
            if n > length:
                found, length = state, n
        return found, length

    def forget(self, slot: str) -> None:
        """Drop ``slot``'s state (the person's history was forgotten)."""
        with self._lock:
            self._slots.pop(slot, None)
            self._forgotten[slot] = self._forgotten.get(slot, 0) + 1
