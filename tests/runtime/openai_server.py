"""A real local HTTP server speaking OpenAI chat-completions streaming, with fault knobs.

It runs in background threads on ``127.0.0.1`` and streams a fixed reply as
Server-Sent Events over chunked HTTP/1.1, one word per event, the way
OpenAI-compatible servers do. Tests set :attr:`ChatServer.behaviour` to inject
delays, error statuses and dropped streams, and read back what the server saw.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = "Hello there. I am glad you came today. The garden looks lovely in the sun."


@dataclass
class Behaviour:
    """What the server does with the next requests.

    Attributes:
        reply: text streamed back, one word (with its leading space) per event.
        first_token_delay: seconds between the role event and the first word.
        token_delay: seconds between later words.
        status: HTTP status for failing requests (200: none fail).
        fail_times: how many requests fail with ``status``; None: all of them.
        error_message: the error body's message; ``{key}`` becomes the bearer token.
        drop_after: close the connection after this many words, without ``[DONE]``.
    """

    reply: str = DEFAULT_REPLY
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    status: int = 200
    fail_times: int | None = None
    error_message: str = "the server failed"
    drop_after: int | None = None


@dataclass
class Seen:
    """What the server recorded; read it under no lock after the stream ended."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0  # streams sent to the end, [DONE] included
    disconnects: int = 0  # streams the client closed before the end
    words_sent: list[int] = field(default_factory=list)


class ChatServer:
    """Start with ``with ChatServer() as server:``; ``server.base_url`` is the API root."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.seen = Seen()
        self._lock = threading.Lock()
        self._failures = 0
        server = self

        class Handler(_Handler):
            chat_server = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Forget what was seen and use ``behaviour`` (default: healthy, no delays)."""
        with self._lock:
            self.behaviour = behaviour or Behaviour()
            self.seen = Seen()
            self._failures = 0

    def wait_for(self, predicate: Any, timeout: float = 3.0) -> bool:
        """Poll ``predicate(seen)`` until true or ``timeout``; returns its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.seen):
                return True
            time.sleep(0.01)
        return bool(predicate(self.seen))

    def should_fail(self) -> bool:
        with self._lock:
            b = self.behaviour
            if b.status == 200:
                return False
            if b.fail_times is None or self._failures < b.fail_times:
                self._failures += 1
                return True
            return False

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    chat_server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        server = self.chat_server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        server.seen.requests.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        b = server.behaviour
        if server.should_fail():
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            message = b.error_message.replace("{key}", key)
            self._json(b.status, {"error": {"message": message, "type": "test_error"}})
            return
        self._stream(b, int(body.get("max_tokens") or 1_000_000))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = f"data: {text}\n\n".encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, b: Behaviour, max_tokens: int) -> None:
        server = self.chat_server
        words = re.findall(r"\s*\S+", b.reply)
        length_cut = len(words) > max_tokens
        words = words[:max_tokens]
        sent = 0

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [choice]}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._event(chunk({"role": "assistant", "content": ""}))
            time.sleep(b.first_token_delay)
            for i, word in enumerate(words):
                if b.drop_after is not None and i >= b.drop_after:
                    self.close_connection = True  # mid-chunked-body: the client sees a cut
                    server.seen.words_sent.append(sent)
                    return
                if i:
                    time.sleep(b.token_delay)
                self._event(chunk({"content": word}))
                sent += 1
            self._event(chunk({}, "length" if length_cut else "stop"))
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            server.seen.completed += 1
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            server.seen.disconnects += 1
        server.seen.words_sent.append(sent)
