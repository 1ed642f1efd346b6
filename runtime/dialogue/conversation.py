"""Persona, per-person memory and sentence-by-sentence replies over a dialogue backend.

:class:`Conversation` is the single retry point for dialogue backends: a
retryable :class:`~runtime.errors.DialogueError` raised before the first
sentence reached the caller is retried (``ConversationOptions.attempts`` in
all); once a sentence was yielded, errors propagate, because the person may
already be hearing it.

What is remembered is what the person heard:

* a reply that completes stores the user turn and every sentence yielded;
* a reply cut short (the consuming task cancelled, the iterator closed, the
  persona's ``max_sentences`` reached, or an error after partial output) stores
  the user turn and only the sentences yielded so far;
* after a barge-in, :meth:`Conversation.record_played` shrinks the stored reply
  to what the speaker actually played.

Every reply is held to the hard rules (:mod:`runtime.dialogue.guard`, unless
``ConversationOptions.guard`` is off): the persona's name, no claim to be a real
person, no role-play talk, no doses; a piece that breaks one is never said, so never
remembered either, and the history stays clean. When the person sounds in distress,
the reply begins with the guard's caring words that point to help.

Turn time stays flat: when the backend can warm prompts
(:class:`~runtime.dialogue.base.PromptWarming`), every change of a person's history
is followed by a background warming of the next prompt's known part (persona and
history), under that person's own cache slot; the memory trims its oldest messages
in steps (``trim_to``), rarely, because a trim changes everything after the
persona and that must be evaluated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime.dialogue.base import DialogueBackend, GenerationOptions, Message, PromptWarming
from runtime.dialogue.guard import ReplyGuard
from runtime.errors import ConfigError, DialogueError
from runtime.safety import DistressDetector
from voice.sentences import CLOSERS, SOFT_BREAKS, SentenceCutter, split_sentences

log = logging.getLogger(__name__)

_LANGUAGES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
    "nl": "Dutch", "pt": "Portuguese", "zh": "Chinese", "ja": "Japanese",
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Persona:
    """Who the companion is and how it speaks.

    Attributes:
        name: the name the companion uses for itself.
        tone: a few words on its manner, used verbatim in the prompt.
        language: ISO 639-1 code of the language it answers in.
        eldercare: speak for older listeners: slow, clear, short sentences, simple words.
        max_sentences: most sentences per reply; the reply is cut there (None: no limit).
    """

    name: str = "Robin"
    tone: str = "warm, patient and gently cheerful"
    language: str = "en"
    eldercare: bool = False
    max_sentences: int | None = 3

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("persona.name must not be empty")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ConfigError(f"persona.max_sentences must be >= 1, got {self.max_sentences}")


def system_prompt(persona: Persona) -> str:
    """The system message that sets up ``persona`` for the model.

    Short: the persona's facts (its name; an AI companion, not a human nor anyone's
    relative), medicine to the nurse or doctor, and what it says when asked its name or
    asked to pretend, told in prose. Told as a "Person: / Robin:" transcript, the example
    made SmolLM2-135M open greedy replies with "Hello!" and copy that into every later
    turn. It stays one system message, so the persona's prompt is shared and warmable.
    Measured with ``likeness bench conversation`` (docs/conversation.md).
    """
    language = _LANGUAGES.get(persona.language, f"the language with code '{persona.language}'")
    name = persona.name
    lines = [
        f"You are {name}, an AI companion who talks with people face to face in a video call.",
        f"Your name is {name}. You are not a human, and not anyone's relative or friend from "
        "the past; never pretend to be someone else.",
        f"Your manner is {persona.tone}.",
        f"Always answer in {language}, in plain spoken sentences: no lists, no markdown, "
        "no emojis.",
    ]
    if persona.max_sentences is not None:
        lines.append(f"Answer in at most {persona.max_sentences} sentences.")
    if persona.eldercare:
        lines += [
            "You are talking with an older person. Speak slowly and clearly.",
            "Use short sentences and simple, everyday words, one idea at a time.",
            "If they fell, are hurt or need help, tell them to call the care staff.",
        ]
    lines += [
        "For medicine questions, tell them to ask the nurse or doctor.",
        f'Asked your name, you say: "My name is {name}. I am your AI companion."',
        "Asked to pretend to be someone, you say: \"I can't be your daughter, but I'm happy "
        'to keep you company."',
    ]
    return "\n".join(lines)


def _ends_sentence(piece: str) -> bool:
    """Whether a piece from the cutter ends a sentence (not a first clause cut at a comma)."""
    return not piece.rstrip("".join(CLOSERS)).endswith(tuple(SOFT_BREAKS))


class ConversationMemory:
    """Per-person chat history, bounded and persisted as one JSON file per person.

    Every change is written to a temporary file, flushed to disk and moved over
    the old file with ``os.replace``, so a crash keeps the last committed history.
    Consecutive messages of the same role are merged (some chat templates require
    alternating roles). Thread-safe.

    Args:
        directory: where the files live; created on the first write.
        max_turns: most messages kept per person (a question and its reply are two);
            the history never starts with a reply.
        trim_to: once a history grows past ``max_turns``, its oldest messages are
            dropped until at most this many remain (default ``max_turns``: one at a
            time). Lower trims less often, in bigger steps (a trim makes a caching
            LLM evaluate the whole history again).
        on_forget: called with the person id after :meth:`forget`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_turns: int = 20,
        trim_to: int | None = None,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        if max_turns < 2:
            raise ConfigError(f"memory.max_turns must be >= 2, got {max_turns}")
        trim_to = max_turns if trim_to is None else trim_to
        if not 1 <= trim_to <= max_turns:
            raise ConfigError(f"memory trim_to must be in 1..{max_turns}, got {trim_to}")
        self.directory = Path(directory)
        self.max_turns = max_turns
        self.trim_to = trim_to
        self.on_forget = on_forget
        self._cache: dict[str, list[Message]] = {}
        self._lock = threading.Lock()

    def history(self, person_id: str) -> list[Message]:
        """A copy of ``person_id``'s stored messages, oldest first."""
        with self._lock:
            return list(self._load(person_id))

    def append(self, person_id: str, message: Message) -> None:
        """Add one message and write the history to disk.

        Raises:
            OSError: the file could not be written; memory keeps the change.
        """
        self.extend(person_id, [message])

    def extend(self, person_id: str, messages: Iterable[Message]) -> None:
        """Add several messages with a single write (see :meth:`append`)."""
        with self._lock:
            stored = self._load(person_id)
            for message in messages:
                if stored and stored[-1].role == message.role:
                    merged = f"{stored[-1].content}\n{message.content}".strip()
                    stored[-1] = Message(message.role, merged)
                else:
                    stored.append(message)
            self._trim(stored)
            self._write(person_id, stored)

    def replace_last_reply(self, person_id: str, text: str) -> None:
        """Replace the latest assistant message by ``text``, or drop it if ``text`` is blank.

        Does nothing when the history does not end with an assistant message.
        """
        with self._lock:
            stored = self._load(person_id)
            if not stored or stored[-1].role != "assistant":
                return
            text = text.strip()
            if text:
                stored[-1] = Message("assistant", text)
            else:
                stored.pop()
            self._write(person_id, stored)

    def forget(self, person_id: str) -> None:
        """Delete everything stored for ``person_id``."""
        with self._lock:
            self._cache.pop(person_id, None)
            self._path(person_id).unlink(missing_ok=True)
        if self.on_forget is not None:
            self.on_forget(person_id)

    def _path(self, person_id: str) -> Path:
        # Hashed: any id (slashes, dots, length) maps to a safe file name.
        digest = hashlib.sha256(person_id.encode("utf-8")).hexdigest()[:32]
        return self.directory / f"{digest}.json"

    def _load(self, person_id: str) -> list[Message]:
        if person_id in self._cache:
            return self._cache[person_id]
        path = self._path(person_id)
        messages: list[Message] = []
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                messages = [Message(m["role"], m["content"]) for m in data["messages"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                aside = path.with_suffix(".corrupt")
                log.error("memory: unreadable %s (%s); moved to %s", path, exc, aside.name)
                os.replace(path, aside)
        self._cache[person_id] = messages
        return messages

    def _trim(self, stored: list[Message]) -> None:
        if len(stored) > self.max_turns:
            del stored[: len(stored) - self.trim_to]
        while stored and stored[0].role != "user":
            stored.pop(0)

    def _write(self, person_id: str, stored: Sequence[Message]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "person_id": person_id,
            "messages": [{"role": m.role, "content": m.content} for m in stored],
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".memory-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self._path(person_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationOptions:
    """How replies are generated and retried.

    Attributes:
        generation: sampling options passed to the backend.
        attempts: tries per reply (1 disables the retry); only before any sentence.
        retry_delay_s: pause before a retry.
        first_clause_chars: when set, the reply's first sentence is also cut at its
            first comma after this many characters, so its first clause is spoken while
            the model still writes the rest (it does not count as a sentence of
            ``Persona.max_sentences``). None: whole sentences only.
        guard: hold every reply to the hard rules (:mod:`runtime.dialogue.guard`): the
            persona's name, no claim to be a real person, no role-play talk, no doses,
            and caring words that point to help when the person sounds in distress.
            False: the model's words as they come (to measure the model alone).
    """

    generation: GenerationOptions = field(default_factory=GenerationOptions)
    attempts: int = 2
    retry_delay_s: float = 0.25
    first_clause_chars: int | None = None
    guard: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"conversation.attempts must be >= 1, got {self.attempts}")
        if self.first_clause_chars is not None and self.first_clause_chars < 1:
            raise ConfigError(
                f"conversation.first_clause_chars must be >= 1, got {self.first_clause_chars}"
            )


class Conversation:
    """Ties a backend, a persona and a memory into sentence-streamed replies.

    Args:
        backend: a loaded dialogue backend; the caller keeps ownership (and closes it).
        persona: who is speaking.
        memory: where each person's history lives.
        options: generation and retry options.
        detector: the distress detector whose alerts begin a reply with caring words
            (``options.guard``); None: the default phrases.
    """

    def __init__(
        self,
        backend: DialogueBackend,
        persona: Persona,
        memory: ConversationMemory,
        options: ConversationOptions | None = None,
        *,
        detector: DistressDetector | None = None,
    ) -> None:
        self.backend = backend
        self.persona = persona
        self.memory = memory
        self.options = options or ConversationOptions()
        self.guard = ReplyGuard(persona.name, eldercare=persona.eldercare, detector=detector)
        self._warming: asyncio.Task[None] | None = None
        if isinstance(backend, PromptWarming):
            forget = memory.on_forget

            def forget_both(person_id: str) -> None:
                if self._warming is not None:
                    self._warming.cancel()
                backend.forget(person_id)  # the person's evaluated history goes too
                if forget is not None:
                    forget(person_id)

            memory.on_forget = forget_both

    def prompt(self, person_id: str, user_text: str | None = None) -> list[Message]:
        """The messages the model sees: persona, ``person_id``'s history, the question."""
        question = [] if user_text is None else [Message("user", user_text)]
        return [
            Message("system", system_prompt(self.persona)),
            *self.memory.history(person_id),
            *question,
        ]

    async def warm(self, person_id: str | None = None) -> None:
        """Let the backend evaluate the next prompt's known part now (a no-op for
        backends that cannot): the persona alone (``person_id`` None, shared by
        everyone), or the persona and ``person_id``'s history."""
        if not isinstance(self.backend, PromptWarming):
            return
        if person_id is None:
            await self.backend.warm([Message("system", system_prompt(self.persona))], None)
        else:
            await self.backend.warm(self.prompt(person_id), person_id)

    async def warmed(self) -> None:
        """Wait for the background warming started by the last change, if any."""
        task = self._warming
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _warm_later(self, person_id: str) -> None:
        """Warm ``person_id``'s next prompt in the background (replacing a pending one)."""
        if not isinstance(self.backend, PromptWarming):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a closed generator finalised late): skip
            return
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
        self._warming = loop.create_task(self._warm_quietly(person_id), name="dialogue-warm")

    async def _warm_quietly(self, person_id: str) -> None:
        try:
            await self.warm(person_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a speed-up must never break a turn
            log.warning("dialogue: warming the next prompt failed: %s", exc)

    async def reply(self, person_id: str, user_text: str) -> AsyncIterator[str]:
        """Answer ``user_text`` from ``person_id``, yielding each sentence once complete.

        Send each sentence to TTS as it arrives. To stop early (barge-in), cancel
        the consuming task or ``aclose()`` the iterator: the backend stops and only
        the sentences yielded so far are stored. Then call :meth:`record_played`.

        Raises:
            DialogueError: the backend failed after the retries, or after a
                sentence was already yielded.
        """
        messages = self.prompt(person_id, user_text)
        limit = self.persona.max_sentences
        guard = self.guard if self.options.guard else None
        spoken: list[str] = []

        def full() -> bool:
            return limit is not None and sum(1 for s in spoken if _ends_sentence(s)) >= limit

        try:
            opening = guard.opening(user_text) if guard is not None else None
            for sentence in split_sentences(opening or ""):
                spoken.append(sentence)
                yield sentence
                if full():
                    return
            opened = len(spoken)
            for attempt in range(1, self.options.attempts + 1):
                try:
                    answer = self._answer(messages, person_id, guard, opened > 0, user_text)
                    async with contextlib.aclosing(answer) as sentences:
                        async for sentence in sentences:
                            spoken.append(sentence)
                            yield sentence
                            if full():
                                return
                    return
                except DialogueError as exc:
                    if (
                        len(spoken) > opened
                        or not exc.retryable
                        or attempt >= self.options.attempts
                    ):
                        raise
                    log.warning(
                        "dialogue: %s failed before any sentence (%s); retry %d of %d",
                        self.backend.name,
                        exc,
                        attempt,
                        self.options.attempts - 1,
                    )
                    await asyncio.sleep(self.options.retry_delay_s)
        finally:
            self._store(person_id, user_text, spoken)

    def record_played(self, person_id: str, heard_text: str) -> None:
        """Keep only ``heard_text`` of the last reply (dropped entirely if blank).

        Call it after a barge-in, once the reply iterator has finished or been closed.
        """
        try:
            self.memory.replace_last_reply(person_id, heard_text)
        except OSError:
            log.exception("memory: could not store what %s heard", person_id)
        self._warm_later(person_id)

    async def _answer(
        self,
        messages: list[Message],
        person_id: str,
        guard: ReplyGuard | None,
        opened: bool,
        user_text: str = "",
    ) -> AsyncIterator[str]:
        """The model's sentences, held to ``guard``'s rules: pieces that break one are
        dropped; when none is left, the model is asked once more with a reminder, and
        then the guard's fallback is said (unless the reply ``opened`` with the guard's
        distress words: they are the answer then)."""
        if guard is None:
            async with contextlib.aclosing(self._sentences(messages, person_id)) as sentences:
                async for sentence in sentences:
                    yield sentence
            return
        reminder = [*messages, Message("system", guard.reminder())]
        introduction = guard.introduction(user_text)
        for prompt in (messages,) if opened else (messages, reminder):
            keep = guard.pieces()
            kept = 0
            async with contextlib.aclosing(self._sentences(prompt, person_id)) as sentences:
                async for sentence in sentences:
                    said = keep(sentence)
                    if said is not None:
                        if not kept and introduction and not guard.says_name(said):
                            yield introduction
                        kept += 1
                        yield said
            if kept:
                return
            log.info(
                "dialogue: nothing of the reply kept the rules; %s",
                "asking again" if prompt is messages else "saying the fallback",
            )
        if not opened:
            for sentence in split_sentences(guard.fallback()):
                yield sentence

    async def _sentences(self, messages: list[Message], person_id: str) -> AsyncIterator[str]:
        cutter = SentenceCutter(min_first_chars=self.options.first_clause_chars)
        options = replace(self.options.generation, cache_slot=person_id)
        stream = self.backend.stream(messages, options)
        async with contextlib.aclosing(stream) as pieces:
            async for piece in pieces:
                for sentence in cutter.feed(piece):
                    yield sentence
        for sentence in cutter.flush():
            yield sentence

    def _store(self, person_id: str, user_text: str, spoken: list[str]) -> None:
        turn = [Message("user", user_text)]
        if spoken:
            turn.append(Message("assistant", " ".join(s.strip() for s in spoken)))
        try:
            self.memory.extend(person_id, turn)
        except OSError:
            log.exception("memory: could not store the turn of %s", person_id)
        self._warm_later(person_id)
