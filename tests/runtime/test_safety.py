"""Distress detection and alert delivery, against a real local HTTP server."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runtime.errors import ConfigError, LikenessError
from runtime.safety import (
    AlertSink,
    DistressAlert,
    DistressDetector,
    DistressOptions,
    LogAlertSink,
    SafetyError,
    WebhookAlertSink,
)

TOKEN = "tok-3f9a1c77-very-secret"
SECRET_PATH = "/hooks/path-secret-8d2e"


# --- detection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "category", "phrase"),
    [
        ("I fell", "fall", "I fell"),
        ("I fell down the stairs", "fall", "I fell"),
        ("Help! I've fallen and I can't get up.", "fall", "can't get up"),
        ("ive fallen", "fall", "I've fallen"),
        ("I have fallen in the bathroom", "fall", "I've fallen"),
        ("I\u2019ve fallen", "fall", "I've fallen"),
        ("My husband fell down in the kitchen", "fall", "fell down"),
        ("I cannot get up", "fall", "can't get up"),
        ("i cant get up", "fall", "can't get up"),
        ("I'm on the floor", "fall", "I'm on the floor"),
        ("No, I fell.", "fall", "I fell"),  # the comma ends the negated clause
        ("I'm not sure, but I think I fell", "fall", "I fell"),
        ("It hurts so much", "pain", "it hurts"),
        ("I have chest pain", "pain", "chest pain"),
        ("I'm in pain.", "pain", "I'm in pain"),
        ("I am in pain", "pain", "I'm in pain"),
        ("I can't breathe", "pain", "can't breathe"),
        ("Help!", "help", "help"),
        ("HELP ME", "help", "help me"),
        ("Please, somebody help me!", "help", "help me"),
        ("Can you help me?", "help", "help me"),
        ("Call someone, quick", "help", "call someone"),
        ("This is an emergency", "help", "emergency"),
        ("I need an ambulance", "help", "ambulance"),
        ("Where am I?", "confusion", "where am I"),
        ("I don't know where I am", "confusion", "I don't know where I am"),
        ("Who are you? What are you doing here?", "confusion", "who are you"),
        ("I'm lost", "confusion", "I'm lost"),
        ("I want to die", "self_harm", "want to die"),
        ("Sometimes I just wanna die", "self_harm", "want to die"),
        ("I'm going to kill myself", "self_harm", "kill myself"),
        ("I want to end it all", "self_harm", "end it all"),
        ("There's no reason to live anymore", "self_harm", "no reason to live"),
        ("I don't want to live anymore", "self_harm", "don't want to live"),
        ("I'm not okay. I want to die.", "self_harm", "want to die"),
        ("I'm not sure I want to die", "self_harm", "want to die"),  # negation too far back
        ("I never want to hurt myself", "self_harm", "hurt myself"),  # likewise (a known limit)
        # the most serious category wins
        ("Help me, I fell and it hurts", "fall", "I fell"),
        ("I want to die, help", "self_harm", "want to die"),
        ("Where am I? It hurts.", "pain", "it hurts"),
        ("My chest feels tight this morning", "pain", "chest feels tight"),
        ("There's a pressure in my chest", "pain", "pressure in my chest"),
    ],
)
def test_distress_is_detected(text: str, category: str, phrase: str) -> None:
    alert = DistressDetector().check(text)
    assert alert is not None
    assert (alert.category, alert.phrase, alert.text) == (category, phrase, text)
    assert alert.severity == ("medium" if category == "confusion" else "high")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "What a lovely day",
        "Did you sleep well?",
        "I didn't fall",
        "I haven't fallen",
        "I have not fallen, don't worry",
        "The falling leaves are pretty",
        "No help needed",
        "No help needed, thanks",
        "I don't need help",
        "I do not need help",
        "Help is not needed",
        "It doesn't hurt",
        "It does not hurt anymore",
        "No chest pain today",
        "I'm not in pain",
        "I'm not lost",
        "I don't want to die",
        "I would never hurt myself",
        "It's not an emergency",
        "I fell asleep in my chair",
        "I fell in love with this song",
        "Can you help me with the television?",
        "Could you help me find my glasses",
        "I'd like to help you",
        "That was very helpful",
        "I feel helpless with computers",
        "Tell me about painting",
        "Who is your favourite singer",
        "Where is the garden?",
    ],
)
def test_ordinary_talk_is_not_distress(text: str) -> None:
    assert DistressDetector().check(text) is None


def test_alert_carries_ids_and_time() -> None:
    before = time.time()
    alert = DistressDetector().check("I fell", person_id="res-12", session_id="s-9")
    after = time.time()
    assert alert is not None
    assert (alert.person_id, alert.session_id) == ("res-12", "s-9")
    assert before <= alert.timestamp <= after
    assert json.loads(json.dumps(alert.to_dict()))["category"] == "fall"
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.category = "pain"  # type: ignore[misc]


def test_disabled_detector_never_alerts() -> None:
    assert DistressDetector(DistressOptions(enabled=False)).check("Help! I fell") is None


def test_phrases_replace_the_defaults() -> None:
    detector = DistressDetector(DistressOptions(phrases={"fall": ("I slipped",)}))
    assert detector.check("Help me") is None
    alert = detector.check("Oh dear, I slipped in the hall")
    assert alert is not None and (alert.category, alert.phrase) == ("fall", "I slipped")


def test_extra_phrases_add_to_the_defaults() -> None:
    detector = DistressDetector(DistressOptions(extra_phrases={"pain": ("my hip hurts",)}))
    alert = detector.check("My hip hurts today")
    assert alert is not None and (alert.category, alert.phrase) == ("pain", "my hip hurts")
    assert detector.check("Help") is not None


def test_negation_window_zero_turns_negation_off() -> None:
    alert = DistressDetector(DistressOptions(negation_window=0)).check("I don't need help")
    assert alert is not None and alert.category == "help"


def test_empty_benign_phrases_alert_on_every_match() -> None:
    alert = DistressDetector(DistressOptions(benign_phrases=())).check("I fell asleep")
    assert alert is not None and alert.phrase == "I fell"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phrases": {"boredom": ("meh",)}}, "safety.phrases: unknown category 'boredom'"),
        ({"extra_phrases": {"pain": "ouch"}}, "safety.extra_phrases.pain"),
        ({"phrases": {"pain": ("ouch", "!!")}}, "safety.phrases.pain"),
        ({"negation_window": -1}, "safety.negation_window"),
    ],
)
def test_bad_options_fail_fast(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistressOptions(**kwargs)  # type: ignore[arg-type]


# --- a real local webhook ------------------------------------------------------------


class Webhook:
    """A local HTTP server that records POSTs and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.script: list[tuple[int, float]] = []  # (status, delay before answering)
        self.release = threading.Event()
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(body),
                    }
                )
                status, delay = hook.script.pop(0) if hook.script else (200, 0.0)
                if delay:
                    hook.release.wait(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout case)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_port}{SECRET_PATH}"
    yield hook
    hook.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"


def make_alert() -> DistressAlert:
    alert = DistressDetector().check("Help, I've fallen", person_id="res-1", session_id="s-1")
    assert alert is not None
    return alert


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert SECRET_PATH not in text


def assert_logs_keep_secrets(caplog: pytest.LogCaptureFixture) -> None:
    """The token appears in no log at all (httpx's DEBUG logs included); the webhook path
    appears in none of ours (httpx itself logs the full URL at INFO on "httpx")."""
    assert TOKEN not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("likeness")]
    assert ours
    assert_no_secrets(*ours)


async def test_webhook_posts_the_alert_with_the_token(webhook: Webhook) -> None:
    alert = make_alert()
    await WebhookAlertSink(webhook.url, timeout_s=2.0, token=TOKEN).send(alert)
    assert len(webhook.requests) == 1
    request = webhook.requests[0]
    assert request["path"] == SECRET_PATH
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert request["content_type"] == "application/json"
    assert request["json"] == alert.to_dict()


async def test_webhook_without_token_sends_no_authorization(webhook: Webhook) -> None:
    await WebhookAlertSink(webhook.url, timeout_s=2.0).send(make_alert())
    assert webhook.requests[0]["authorization"] is None


async def test_webhook_retries_once_after_a_500(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.script = [(500, 0.0), (200, 0.0)]
    with caplog.at_level(logging.WARNING, logger="likeness.safety"):
        await WebhookAlertSink(webhook.url, timeout_s=2.0, token=TOKEN).send(make_alert())
    assert len(webhook.requests) == 2
    assert webhook.requests[0]["json"] == webhook.requests[1]["json"]
    assert "HTTP 500" in caplog.text and "retrying" in caplog.text
    assert_logs_keep_secrets(caplog)


async def test_webhook_gives_up_after_two_5xx(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.script = [(503, 0.0), (502, 0.0), (200, 0.0)]
    sink = WebhookAlertSink(webhook.url, timeout_s=2.0, token=TOKEN)
    with caplog.at_level(logging.DEBUG), pytest.raises(SafetyError) as info:
        await sink.send(make_alert())
    assert len(webhook.requests) == 2
    assert info.value.retryable is True
    assert "HTTP 502" in str(info.value)
    assert isinstance(info.value, LikenessError)
    assert_no_secrets(str(info.value), repr(info.value), repr(sink))
    assert_logs_keep_secrets(caplog)


async def test_webhook_4xx_is_not_retried(webhook: Webhook) -> None:
    webhook.script = [(401, 0.0)]
    with pytest.raises(SafetyError, match="HTTP 401") as info:
        await WebhookAlertSink(webhook.url, timeout_s=2.0, token=TOKEN).send(make_alert())
    assert len(webhook.requests) == 1
    assert info.value.retryable is False
    assert_no_secrets(str(info.value))


async def test_webhook_timeout_is_retried_then_fails(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.script = [(200, 10.0), (200, 10.0)]
    sink = WebhookAlertSink(webhook.url, timeout_s=0.3, token=TOKEN)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(SafetyError, match="Timeout") as info:
        await sink.send(make_alert())
    assert time.monotonic() - started < 5.0
    assert len(webhook.requests) == 2
    assert info.value.retryable is True
    assert_no_secrets(str(info.value))
    assert_logs_keep_secrets(caplog)


async def test_webhook_timeout_then_success(webhook: Webhook) -> None:
    webhook.script = [(200, 10.0), (200, 0.0)]
    await WebhookAlertSink(webhook.url, timeout_s=0.3, token=TOKEN).send(make_alert())
    assert len(webhook.requests) == 2


async def test_webhook_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    sink = WebhookAlertSink(closed_port_url(), timeout_s=2.0, token=TOKEN)
    with caplog.at_level(logging.DEBUG), pytest.raises(SafetyError, match="ConnectError") as info:
        await sink.send(make_alert())
    assert info.value.retryable is True
    assert info.value.__cause__ is None
    assert_no_secrets(str(info.value))
    assert_logs_keep_secrets(caplog)


@pytest.mark.parametrize(
    ("url", "timeout_s", "message"),
    [
        ("ftp://example.org/x", 1.0, "safety.webhook_url"),
        ("not a url", 1.0, "safety.webhook_url"),
        ("http://example.org/x", 0.0, "safety.webhook_timeout_s"),
    ],
)
def test_webhook_refuses_bad_settings(url: str, timeout_s: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebhookAlertSink(url, timeout_s=timeout_s)


# --- the log sink --------------------------------------------------------------------


async def test_log_sink_logs_and_appends_json_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "deep" / "er" / "alerts.jsonl"
    sink = LogAlertSink(path)
    first = make_alert()
    second = DistressDetector().check("Where am I?", session_id="s-2")
    assert second is not None
    with caplog.at_level(logging.WARNING, logger="likeness.safety"):
        await sink.send(first)
        await sink.send(second)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [first.to_dict(), second.to_dict()]
    records = [r for r in caplog.records if r.name == "likeness.safety"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "category=fall" in records[0].getMessage()
    assert "person_id=res-1" in records[0].getMessage()
    assert records[1].distress["severity"] == "medium"  # type: ignore[attr-defined]
    assert "Help, I've fallen" not in caplog.text  # the transcript stays in the file


async def test_log_sink_keeps_non_ascii_text(tmp_path: Path) -> None:
    alert = DistressAlert(category="help", phrase="help", text="help — 救命", severity="high")
    await LogAlertSink(tmp_path / "a.jsonl").send(alert)
    assert "救命" in (tmp_path / "a.jsonl").read_text(encoding="utf-8")


async def test_log_sink_unwritable_path_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SafetyError, match="cannot write alert"):
        await LogAlertSink(tmp_path / "file" / "alerts.jsonl").send(make_alert())


# --- contract: every sink delivers an alert ------------------------------------------


SinkCase = Callable[[Path, Webhook], tuple[AlertSink, Callable[[], Awaitable[list[dict]]]]]


def log_case(tmp_path: Path, webhook: Webhook) -> tuple[AlertSink, Callable]:
    path = tmp_path / "alerts.jsonl"

    async def delivered() -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    return LogAlertSink(path), delivered


def webhook_case(tmp_path: Path, webhook: Webhook) -> tuple[AlertSink, Callable]:
    async def delivered() -> list[dict]:
        return [r["json"] for r in webhook.requests]  # type: ignore[misc]

    return WebhookAlertSink(webhook.url, timeout_s=2.0, token=TOKEN), delivered


@pytest.mark.parametrize("case", [log_case, webhook_case], ids=["log", "webhook"])
async def test_every_sink_delivers_each_alert_once(
    case: SinkCase, tmp_path: Path, webhook: Webhook
) -> None:
    sink, delivered = case(tmp_path, webhook)
    alerts = [make_alert(), DistressDetector().check("I want to die", person_id="res-7")]
    for alert in alerts:
        assert alert is not None
        await sink.send(alert)
    assert await delivered() == [a.to_dict() for a in alerts if a is not None]


def test_the_sites_own_phrases_open_a_caring_reply(tmp_path) -> None:
    """components.conversation hands the configured detector to the reply guard, so a
    site's extra phrase ("my legs gave way") gets the caring opening too."""
    from runtime.components import conversation
    from runtime.config import load_config

    phrase = "my legs gave way"
    extra = {"extra_phrases": {"fall": [phrase]}}
    # No model is loaded: the backend is not touched before a reply.
    site = conversation(load_config(data_dir=tmp_path, safety=extra), None)  # type: ignore[arg-type]
    alert = site.guard.detector.check("Robin, my legs gave way")
    assert alert is not None and alert.phrase == phrase
    plain = conversation(load_config(data_dir=tmp_path), None)  # type: ignore[arg-type]
    assert plain.guard.detector.check(phrase) is None
