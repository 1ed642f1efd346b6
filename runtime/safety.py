"""Distress detection for the eldercare kiosk, and where its alerts go.

``DistressDetector.check`` reads one transcript and returns a ``DistressAlert`` when the
resident said something that sounds like distress ("I fell", "help me", "I want to die").
The session then hands the alert to each configured ``AlertSink``:

- ``LogAlertSink``: a WARNING on the ``likeness.safety`` logger and a JSON line appended
  (and fsync-ed) to a file;
- ``WebhookAlertSink``: a JSON POST to the care home's system, retried once.

How matching works. Text and phrases are lower-cased and cut into words at spaces and
punctuation; apostrophes are dropped and common contractions written out, so "I've
fallen", "ive fallen" and "I have fallen" are the same words. A phrase matches a run of
whole words inside one clause (commas, full stops and "but" end a clause).

Where matching is wrong on purpose, or falls short:

- Negation: a match is dropped when "not", "no", "never" or "without" stands in the
  ``negation_window`` words before it in the same clause ("I don't want to die", "no help
  needed", "I don't need help"), or when "not" / "is not" / "was not" follows it ("help is
  not needed"). Farther negations are missed ("I don't need any help", "I never want to
  hurt myself" alert), and a nearby negation meant for something else still drops a match
  ("I never said help"), though not across a clause end ("No, help!" alerts).
- ``benign_phrases`` that overlap a match drop it ("I fell asleep", "help me with the TV").
- Only the listed phrases are known: "my hip is killing me" or a fall told in other words
  does not alert, and a phrase used in a story ("the man in the film said help") does.
- English only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx

from runtime.errors import ConfigError, LikenessError

logger = logging.getLogger("likeness.safety")

Category = Literal["self_harm", "fall", "pain", "help", "confusion"]
Severity = Literal["high", "medium"]

#: Checked in this order; the first category with a match names the alert.
CATEGORIES: tuple[Category, ...] = ("self_harm", "fall", "pain", "help", "confusion")
SEVERITY: Mapping[Category, Severity] = {
    "self_harm": "high", "fall": "high", "pain": "high", "help": "high", "confusion": "medium",
}  # fmt: skip

DEFAULT_PHRASES: Mapping[Category, tuple[str, ...]] = {
    "self_harm": (
        "want to die", "kill myself", "end it all", "no reason to live", "don't want to live",
        "better off dead", "hurt myself",
    ),
    "fall": (
        "I fell", "I've fallen", "fell down", "can't get up", "I had a fall", "I'm on the floor",
    ),
    "pain": (
        "it hurts", "chest pain", "I'm in pain", "my chest hurts", "can't breathe",
        "chest feels tight", "tight chest", "pressure in my chest",
    ),
    "help": (
        "help", "help me", "call someone", "emergency", "ambulance", "call a nurse",
        "call a doctor",
    ),
    "confusion": ("where am I", "I don't know where I am", "who are you", "I'm lost"),
}  # fmt: skip

DEFAULT_BENIGN: tuple[str, ...] = (
    "fell asleep", "fell in love", "fell for", "help me with", "help me find",
    "help me remember", "help me understand", "help you", "help yourself", "help with",
    "help him", "help her", "help them",
)  # fmt: skip

_NEGATIONS = frozenset({"not", "no", "never", "without"})
_CLAUSE_END = "|"
_CONTRACTIONS = {
    "ive": "i have", "im": "i am", "cant": "can not", "cannot": "can not", "dont": "do not",
    "didnt": "did not", "doesnt": "does not", "wont": "will not", "isnt": "is not",
    "arent": "are not", "wasnt": "was not", "havent": "have not", "hasnt": "has not",
    "couldnt": "could not", "wouldnt": "would not", "shouldnt": "should not",
    "aint": "is not", "youre": "you are", "theyre": "they are", "youve": "you have",
    "weve": "we have", "theyve": "they have", "its": "it is", "whats": "what is",
    "wheres": "where is", "thats": "that is", "dunno": "do not know", "wanna": "want to",
    "gonna": "going to", "gotta": "got to",
}  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+|[.,;:!?()\u2014\u2013]")


def _words(text: str) -> list[str]:
    """Lower-case words with contractions written out; ``|`` marks a clause end."""
    norm = unicodedata.normalize("NFKC", text).lower()
    norm = re.sub(r"['\u2019\u2018`]", "", norm)
    out: list[str] = []
    for tok in _WORD.findall(norm):
        if not tok[0].isalnum() or tok == "but":
            if out and out[-1] != _CLAUSE_END:
                out.append(_CLAUSE_END)
        else:
            out.extend(_CONTRACTIONS.get(tok, tok).split())
    return out


@dataclass(frozen=True, slots=True)
class DistressOptions:
    """What the distress detector listens for.

    Attributes:
        enabled: False turns the detector off (``check`` returns None).
        phrases: phrases per category; replaces ``DEFAULT_PHRASES`` entirely, so give
            every category you want. Categories: ``CATEGORIES``.
        extra_phrases: phrases added to a category's ``phrases`` (site-specific words).
        benign_phrases: phrases that, where they overlap a match, show it is not
            distress ("I fell asleep"). Empty to alert on every match.
        negation_window: how many words before a match a negation may stand to drop it;
            0 turns negation handling off.
    """

    enabled: bool = True
    phrases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PHRASES))
    extra_phrases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    benign_phrases: tuple[str, ...] = DEFAULT_BENIGN
    negation_window: int = 2

    def __post_init__(self) -> None:
        for key, table in (("phrases", self.phrases), ("extra_phrases", self.extra_phrases)):
            for category, phrases in table.items():
                if category not in CATEGORIES:
                    raise ConfigError(
                        f"safety.{key}: unknown category {category!r}; "
                        f"expected one of {', '.join(CATEGORIES)}"
                    )
                if isinstance(phrases, str) or not all(_words(p) for p in phrases):
                    raise ConfigError(
                        f"safety.{key}.{category}: expected a list of phrases with words, "
                        f"got {phrases!r}"
                    )
        if self.negation_window < 0:
            raise ConfigError(f"safety.negation_window: must be >= 0, got {self.negation_window}")


@dataclass(frozen=True, slots=True)
class DistressAlert:
    """Something a resident said that sounds like distress.

    Attributes:
        category: one of ``CATEGORIES``.
        phrase: the configured phrase that matched.
        text: the whole transcript.
        severity: "high" (self-harm, fall, pain, help) or "medium" (confusion).
        timestamp: when it was detected, ``time.time()``.
        person_id: the resident, when the session knows who it is.
        session_id: the session that heard it.
    """

    category: Category
    phrase: str
    text: str
    severity: Severity
    timestamp: float = field(default_factory=time.time)
    person_id: str | None = None
    session_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The alert as a JSON-ready dict."""
        return asdict(self)


class DistressDetector:
    """Looks for distress in transcripts. Cheap to build; ``check`` keeps no state.

    Args:
        options: what to listen for; the defaults when omitted.
    """

    def __init__(self, options: DistressOptions | None = None) -> None:
        self.options = options or DistressOptions()
        self._phrases: list[tuple[Category, str, tuple[str, ...]]] = []
        for category in CATEGORIES:
            listed = (
                *self.options.phrases.get(category, ()),
                *self.options.extra_phrases.get(category, ()),
            )
            # longest first, so the most specific phrase is the one reported
            for phrase in sorted(dict.fromkeys(listed), key=lambda p: -len(_words(p))):
                self._phrases.append((category, phrase, tuple(_words(phrase))))
        self._benign = [tuple(_words(p)) for p in self.options.benign_phrases if _words(p)]

    def check(
        self, text: str, *, person_id: str | None = None, session_id: str | None = None
    ) -> DistressAlert | None:
        """Return an alert when ``text`` sounds like distress, else None.

        Send a returned alert to the alert sinks; the detector keeps no state.
        """
        if not self.options.enabled:
            return None
        words = _words(text)
        for category, phrase, needle in self._phrases:
            for start in _find(words, needle):
                if not self._dismissed(words, start, start + len(needle)):
                    return DistressAlert(
                        category=category, phrase=phrase, text=text,
                        severity=SEVERITY[category], person_id=person_id,
                        session_id=session_id,
                    )  # fmt: skip
        return None

    def _dismissed(self, words: list[str], start: int, end: int) -> bool:
        window = self.options.negation_window
        before: list[str] = []
        for w in reversed(words[max(0, start - window) : start]):
            if w == _CLAUSE_END:
                break
            before.append(w)
        if window and _NEGATIONS.intersection(before):
            return True
        after = words[end : end + 2]
        if window and (after[:1] == ["not"] or after in (["is", "not"], ["was", "not"])):
            return True
        for benign in self._benign:
            for b in _find(words, benign):
                if b < end and start < b + len(benign):
                    return True
        return False


def _find(words: list[str], needle: tuple[str, ...]) -> list[int]:
    n = len(needle)
    return [i for i in range(len(words) - n + 1) if tuple(words[i : i + n]) == needle]


class SafetyError(LikenessError):
    """An alert could not be delivered. Never carries a token or a full URL.

    Args:
        message: what failed.
        retryable: True when a later try may succeed (timeouts, 5xx, connection errors).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class AlertSink(Protocol):
    """Somewhere alerts go. ``send`` raises ``SafetyError`` when delivery failed."""

    async def send(self, alert: DistressAlert) -> None:
        """Deliver one alert."""
        ...


class LogAlertSink:
    """Logs each alert at WARNING and appends it as one JSON line to ``path``.

    The transcript goes to the file only, not to the log. Parent folders are created
    on the first send; each line is fsync-ed before ``send`` returns.

    Args:
        path: the JSON-lines file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def send(self, alert: DistressAlert) -> None:
        """Log and append the alert.

        Raises:
            SafetyError: the file could not be written.
        """
        fields = {k: v for k, v in alert.to_dict().items() if k != "text"}
        logger.warning(
            "distress alert category=%s severity=%s phrase=%r person_id=%s session_id=%s",
            alert.category, alert.severity, alert.phrase, alert.person_id, alert.session_id,
            extra={"distress": fields},
        )  # fmt: skip
        line = json.dumps(alert.to_dict(), ensure_ascii=False) + "\n"
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise SafetyError(f"cannot write alert to {self.path}: {exc.strerror}") from exc

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class WebhookAlertSink:
    """POSTs each alert as JSON to a webhook; retries once on 5xx, timeouts and
    connection errors.

    Args:
        url: the endpoint. Only its scheme and host appear in our logs and errors, since
            webhook paths often hold secrets; httpx itself logs the full URL at INFO on
            the "httpx" logger, so keep that logger at WARNING where paths are secret.
        timeout_s: limit for each attempt, seconds.
        token: sent as ``Authorization: Bearer <token>`` when given; never logged.
    """

    attempts = 2

    def __init__(self, url: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("safety.webhook_url: expected an http(s) URL")
        if timeout_s <= 0:
            raise ConfigError(f"safety.webhook_timeout_s: must be > 0, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self._token = token
        self._where = f"{parts.scheme}://{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )

    def __repr__(self) -> str:
        return f"WebhookAlertSink({self._where!r}, timeout_s={self.timeout_s})"

    async def send(self, alert: DistressAlert) -> None:
        """POST the alert; return when the webhook answered 2xx.

        Raises:
            SafetyError: a 1xx, 3xx or 4xx answer (not retried, ``retryable`` False), or
                failure of the last attempt (``retryable`` True); the caller should log it
                and fall back to another sink.
        """
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        body = json.dumps(alert.to_dict(), ensure_ascii=False).encode()
        problem = ""
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await client.post(self.url, content=body, headers=headers)
                except httpx.TransportError as exc:
                    problem = type(exc).__name__
                else:
                    if 200 <= response.status_code < 300:
                        return
                    problem = f"HTTP {response.status_code}"
                    if response.status_code < 500:
                        raise SafetyError(f"webhook {self._where} refused the alert: {problem}")
                if attempt < self.attempts:
                    logger.warning("webhook %s failed (%s), retrying once", self._where, problem)
        raise SafetyError(
            f"webhook {self._where} failed after {self.attempts} attempts: {problem}",
            retryable=True,
        )
