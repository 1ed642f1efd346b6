"""Holds a companion's reply to the hard rules while it streams.

A small model breaks the rules of :mod:`runtime.dialogue.rules` often (SmolLM2-135M, asked
its name as "Robin": *"My name is Rebecca. I am currently in the role of "Rebecca" in
the game of "Buffy"..."*). :class:`ReplyGuard` sits between the model and the speaker,
one piece (sentence or first clause) at a time, so it costs no latency:

- a name the reply claims that is not the persona's is replaced by the persona's name,
  in that piece and in the rest of the reply ("My name is Rebecca." → "My name is Robin.");
- a piece that claims to be a real person or a relative, talks about role-play, games or
  being a model, or advises a medicine dose is dropped: it is never said, nor remembered;
- a speaker tag the model wrote at the start ("Robin:", "Assistant:") is removed;
- asked who is talking ("What is your name?", "Who are you?"), a reply whose first
  piece does not say the persona's name is preceded by "I'm <name>."
  (:meth:`ReplyGuard.introduction`).

When nothing of the model's reply is left, :class:`~runtime.dialogue.conversation.
Conversation` asks once more with :meth:`ReplyGuard.reminder` after the question, and
says :meth:`ReplyGuard.fallback` if that fails too.

Distress: when the person's words raise a distress alert (:mod:`runtime.safety`, the
detector the session alerts with), the reply begins with a fixed, caring sentence that
points to help, chosen by the alert's category (:meth:`ReplyGuard.opening`); the model's
own words follow. A model of any size may miss that the person fell; these words are
reviewed once, here, and said every time. "Who are you?" is on the detector's confusion
list, but it is the identity question: it gets no opening, the model answers it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from runtime.dialogue.rules import asks_who, broken_rule, claimed_names
from runtime.safety import DistressDetector

log = logging.getLogger(__name__)

#: Alert phrases that get no opening (see the module doc).
NO_OPENING = frozenset({"who are you"})

# (eldercare, everyone else) per alert category.
_OPENINGS = {
    "fall": (
        "I'm sorry you fell. Please stay still and press your call button for the staff.",
        "I'm sorry you fell. Please stay still and call someone nearby or the emergency number.",
    ),
    "pain": (
        "I'm sorry you're in pain. Please press your call button now, so a nurse can come.",
        "I'm sorry you're in pain. If it is bad, please call the emergency number now.",
    ),
    "help": (
        "I'm here with you. Please press your call button, so the staff can come and help.",
        "I'm here with you. If you need help now, please call someone nearby or the emergency "
        "number.",
    ),
    "self_harm": (
        "I'm so sorry you feel this way, and I'm glad you told me. Please tell a nurse or "
        "someone you trust right now.",
        "I'm so sorry you feel this way, and I'm glad you told me. Please call a crisis line "
        "or someone you trust right now.",
    ),
    "confusion": (
        "You're safe, and I'm here with you. The staff can help you find your way.",
        "You're safe, and I'm here with you. Someone nearby can help you find your way.",
    ),
}
_SPEAKER_TAG = re.compile(r"^\s*(?:assistant|ai|companion|bot)\s*:\s*", re.IGNORECASE)


class ReplyGuard:
    """The hard rules for one persona. Cheap to build; keeps no state between replies.

    Args:
        name: the persona's name.
        eldercare: choose the openings for a care home (call button, staff).
        detector: the distress detector whose alerts get an opening; None: the default
            phrases (:class:`~runtime.safety.DistressDetector`).
    """

    def __init__(
        self, name: str, *, eldercare: bool = False, detector: DistressDetector | None = None
    ) -> None:
        self.name = name
        self.eldercare = eldercare
        self.detector = detector if detector is not None else DistressDetector()
        self._tag = re.compile(rf"^\s*{re.escape(name)}\s*:\s*", re.IGNORECASE)

    def opening(self, user_text: str) -> str | None:
        """The caring words that begin the reply to ``user_text``, or None (no distress)."""
        alert = self.detector.check(user_text)
        if alert is None or alert.phrase.lower() in NO_OPENING:
            return None
        eldercare, everyone = _OPENINGS[alert.category]
        return eldercare if self.eldercare else everyone

    def introduction(self, user_text: str) -> str | None:
        """What to say first when ``user_text`` asks who is talking and the reply's first
        piece does not say the name; None when it does not ask."""
        return f"I'm {self.name}." if asks_who(user_text) else None

    def says_name(self, text: str) -> bool:
        """Whether ``text`` says the persona's name."""
        return re.search(rf"\b{re.escape(self.name)}\b", text, re.IGNORECASE) is not None

    def reminder(self) -> str:
        """A system note after the question, for the one re-ask."""
        return (
            f"Answer as {self.name}, an AI companion, in one or two short sentences about "
            "what the person just said. Do not pretend to be anyone else."
        )

    def fallback(self) -> str:
        """What is said when the model's reply broke the rules twice."""
        return f"I'm {self.name}, your AI companion. Could you tell me a little more?"

    def pieces(self) -> Callable[[str], str | None]:
        """A filter for one reply's pieces, in order: the piece to say, or None to drop it."""
        wrong: list[str] = []

        def keep(piece: str) -> str | None:
            text = self._tag.sub("", _SPEAKER_TAG.sub("", piece))
            wrong.extend(n for n in claimed_names(text, self.name) if n not in wrong)
            for other in wrong:
                text = re.sub(rf"\b{re.escape(other)}\b", self.name, text)
            broken = broken_rule(text, self.name)
            if broken is not None:
                # The rule only: what a person talks about stays out of the logs.
                log.info("dialogue guard: dropped a piece that broke the %s rule", broken[0])
                return None
            if wrong and text != piece:
                log.info("dialogue guard: the reply claimed the name %r", wrong[0])
            return text if text.strip() else None

        return keep
