"""Structured logging: one set-up for the CLI and the server.

Console output goes to stderr (human-readable or JSON per ``log_format``); a JSON
copy goes to ``<data_dir>/logs/likeness.log``. A redaction step replaces the value
of any key that looks like a secret, so an API key never reaches a log line.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

# Whole key names, or suffixes, that hold secrets ("first_token" is a latency, not a secret).
_SECRET_KEY = re.compile(
    r"^(api_?key|token|access_token|refresh_token|webhook_token|secret|password|authorization"
    r"|cookie|csrf_token|session_token|nonce)$|(_api_?key|_secret|_password)$",
    re.I,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and bearer tokens in strings."""
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key) and value:
            event[key] = "***"
        elif isinstance(value, str) and "earer" in value:
            event[key] = _BEARER.sub(r"\1***", value)
    return event


def setup_logging(level: str = "info", fmt: str = "console", log_dir: Path | None = None) -> None:
    """Configure stdlib logging and structlog once per process.

    Args:
        level: "debug", "info", "warning" or "error".
        fmt: "console" for people, "json" for machines (stderr).
        log_dir: where ``likeness.log`` (JSON lines, rotated) goes; None = no file.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    console_renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_likeness", False):
            root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                console_renderer,
            ],
        )
    )
    console._likeness = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(
            log_dir / "likeness.log", maxBytes=10_000_000, backupCount=3, encoding="utf-8"
        )
        to_file.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        to_file._likeness = True  # type: ignore[attr-defined]
        root.addHandler(to_file)
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless we debug.
    for name in ("httpx", "httpcore", "faster_whisper", "numba", "urllib3", "aioice", "aiortc"):
        logging.getLogger(name).setLevel("DEBUG" if level == "debug" else "WARNING")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; pass key=value pairs, not formatted strings."""
    return structlog.get_logger(name)
