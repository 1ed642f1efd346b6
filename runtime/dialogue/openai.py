"""Dialogue backend for any OpenAI-compatible chat-completions server.

Works against vLLM, Ollama (``http://localhost:11434/v1``), the llama.cpp server
and hosted APIs: ``POST {base_url}/chat/completions`` with ``stream=true``, read
as Server-Sent Events (``data: {...}`` lines, ended by ``data: [DONE]``).

Errors map onto :class:`~runtime.errors.DialogueError`:

* HTTP 408/429/5xx, connection failures, stalled reads and streams that end
  before ``[DONE]`` are ``retryable``;
* no text within ``first_token_timeout_s`` raises
  :class:`~runtime.errors.DialogueTimeoutError` (retryable);
* other HTTP errors (400, 401, 403, 404, ...) are not retryable and carry the
  server's own message, truncated. The API key never appears in an error or a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from runtime.dialogue.base import GenerationOptions, Message
from runtime.errors import ConfigError, DialogueError, DialogueTimeoutError

log = logging.getLogger(__name__)

_MAX_SERVER_MESSAGE = 300
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_SECRET_HEADER = re.compile(r"key|auth|token|secret|cookie", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIOptions:
    """How to reach an OpenAI-compatible server.

    Attributes:
        model: model name the server knows (e.g. ``"qwen2.5:7b-instruct"``); required.
        base_url: API root without ``/chat/completions``.
        api_key: sent as ``Authorization: Bearer``; None sends no header. Never
            logged, never in ``repr`` or error messages.
        connect_timeout_s: limit for opening the connection.
        first_token_timeout_s: limit from sending the request to the first text
            piece; also the longest allowed silence between later chunks.
        overall_timeout_s: limit for the whole reply.
        headers: extra request headers as ``(name, value)`` pairs.
    """

    model: str
    base_url: str = "http://localhost:11434/v1"
    api_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 20.0
    overall_timeout_s: float = 120.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("dialogue.openai.model is missing, and has no default.")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"dialogue.openai.base_url must start with http:// or https://, "
                f"got {self.base_url!r}"
            )
        for name in ("connect_timeout_s", "first_token_timeout_s", "overall_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"dialogue.openai.{name} must be > 0")


class OpenAIChat:
    """Streams replies from an OpenAI-compatible server over one pooled HTTP client.

    Build it with :meth:`load`; call :meth:`aclose` when done. Several streams may
    run at once. Closing a stream (``aclose()`` or cancelling the consuming task)
    closes its HTTP response, so the server sees the disconnect and can stop.

    Args:
        options: where and how to connect.
        client: an ``httpx.AsyncClient`` to use; it is closed by :meth:`aclose`.
    """

    name = "openai"

    def __init__(self, options: OpenAIOptions, client: httpx.AsyncClient) -> None:
        self.options = options
        self._client = client
        url = httpx.URL(options.base_url.rstrip("/") + "/chat/completions")
        self._url = url
        # Shown in errors and logs: no userinfo, no query string.
        self._where = str(url.copy_with(userinfo=b"", query=None))

    @classmethod
    async def load(cls, options: OpenAIOptions) -> OpenAIChat:
        """Create the HTTP client. Nothing is sent until the first :meth:`stream`."""
        timeout = httpx.Timeout(
            connect=options.connect_timeout_s,
            read=options.first_token_timeout_s,
            write=options.connect_timeout_s,
            pool=options.connect_timeout_s,
        )
        headers = {"Accept": "text/event-stream", **dict(options.headers)}
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        return cls(options, httpx.AsyncClient(timeout=timeout, headers=headers))

    async def aclose(self) -> None:
        """Close the HTTP client and its pooled connections."""
        await self._client.aclose()

    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Yield the reply's text pieces as the server streams them.

        Raises:
            DialogueTimeoutError: no text within ``first_token_timeout_s``.
            DialogueError: the request or the stream failed; see ``retryable``.
        """
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        if options.stop:
            payload["stop"] = list(options.stop)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_deadline = started + self.options.first_token_timeout_s
        overall_deadline = started + self.options.overall_timeout_s
        got_text = False
        log.debug("openai: POST %s model=%s", self._where, self.options.model)

        def deadline() -> float:
            return overall_deadline if got_text else min(first_deadline, overall_deadline)

        request = self._client.build_request("POST", self._url, json=payload)
        response = await self._guard(self._client.send(request, stream=True), deadline(), got_text)
        try:
            if response.status_code >= 400:
                body = await self._guard(response.aread(), deadline(), got_text)
                raise self._status_error(response.status_code, body)
            lines = response.aiter_lines()
            finished = False  # a finish_reason was seen: [DONE] may follow or not
            while True:
                try:
                    line = await self._guard(anext(lines), deadline(), got_text)
                except StopAsyncIteration:
                    break
                done, ended, text = self._parse_line(line)
                if done:
                    return
                finished = finished or ended
                if text:
                    got_text = True
                    yield text
            if not finished:
                raise DialogueError(
                    f"openai: stream from {self._where} ended before [DONE]", retryable=True
                )
        finally:
            await response.aclose()

    async def _guard(self, awaitable: Any, deadline: float, got_text: bool) -> Any:
        """Await one network step under the current deadline, mapping httpx errors."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await awaitable
        except TimeoutError as exc:
            raise self._timeout_error(got_text) from exc
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise DialogueError(
                    f"openai: could not connect to {self._where} in time", retryable=True
                ) from exc
            raise self._timeout_error(got_text) from exc
        except httpx.TransportError as exc:
            raise DialogueError(
                f"openai: connection to {self._where} failed: {type(exc).__name__}",
                retryable=True,
            ) from exc
        except httpx.HTTPError as exc:
            raise DialogueError(
                f"openai: request to {self._where} failed: {type(exc).__name__}"
            ) from exc

    def _timeout_error(self, got_text: bool) -> DialogueError:
        if got_text:
            return DialogueError(
                f"openai: {self._where} stalled or exceeded "
                f"{self.options.overall_timeout_s:g} s mid-reply",
                retryable=True,
            )
        return DialogueTimeoutError(
            f"openai: no text from {self._where} within {self.options.first_token_timeout_s:g} s"
        )

    def _parse_line(self, line: str) -> tuple[bool, bool, str]:
        """Parse one SSE line into ``(done, finished, text)``."""
        if not line.startswith("data:"):
            return False, False, ""  # blank separators, comments, event/id fields
        data = line[5:].strip()
        if data == "[DONE]":
            return True, True, ""
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise DialogueError(
                f"openai: {self._where} sent a malformed event: {self._redact(data)}"
            ) from exc
        if not isinstance(event, dict):
            return False, False, ""
        if "error" in event:
            raise DialogueError(
                f"openai: {self._where} failed mid-stream: {self._redact(self._error_text(event))}",
                retryable=True,
            )
        choices = event.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return False, False, ""
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        finished = choice.get("finish_reason") is not None
        return False, finished, text if isinstance(text, str) else ""

    def _status_error(self, status: int, body: bytes) -> DialogueError:
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        try:
            detail = self._error_text(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            detail = body.decode("utf-8", "replace")
        message = f"openai: HTTP {status} from {self._where}: {self._redact(detail)}"
        log.warning("%s (retryable=%s)", message, retryable)
        return DialogueError(message, retryable=retryable)

    @staticmethod
    def _error_text(payload: Any) -> str:
        """The ``error.message`` of an OpenAI-style error body, else the body as text."""
        if isinstance(payload, dict):
            error = payload.get("error", payload)
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return error["message"]
            if isinstance(error, str):
                return error
        return json.dumps(payload)[:_MAX_SERVER_MESSAGE]

    def _redact(self, text: str) -> str:
        """Collapse, truncate and strip the API key and secret header values from ``text``."""
        text = " ".join(text.split())
        secrets = [self.options.api_key or ""] + [
            value for name, value in self.options.headers if _SECRET_HEADER.search(name)
        ]
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        if len(text) > _MAX_SERVER_MESSAGE:
            text = text[: _MAX_SERVER_MESSAGE - 1] + "…"
        return text
