"""What every command module shares: the state, error mapping, output helpers.

Conventions every command follows: bad input exits with code 2 and one line on
stderr; other failures exit 1; long work shows a progress bar on stderr;
``likeness bench <what> [--json PATH]`` prints a table and writes JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import avatar
import consent
import voice
from avatar.errors import FaceNotFoundError, ImageInputError
from avatar.errors import ModelNotFoundError as AvatarModelNotFoundError
from runtime.config import Settings, ensure_data_dir, load_config
from runtime.errors import ConfigError, InputError, LikenessError
from runtime.logs import setup_logging
from voice.errors import AudioInputError, ModelNotFoundError

out = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)

BAD_INPUT = (
    ConfigError,
    InputError,
    AudioInputError,
    ModelNotFoundError,
    ImageInputError,
    FaceNotFoundError,
    AvatarModelNotFoundError,
)
KNOWN = (LikenessError, voice.VoiceError, avatar.AvatarError, consent.ConsentError)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    config_path: Path | None = None
    overrides: dict[str, Any] | None = None
    settings: Settings | None = None

    def load(self) -> Settings:
        if self.settings is None:
            self.settings = load_config(self.config_path, **(self.overrides or {}))
            ensure_data_dir(self.settings)
            setup_logging(self.settings.log_level, self.settings.log_format, self.settings.log_dir)
        return self.settings


state = _State()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    print(f"likeness: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Map the packages' errors to exit codes: 2 for bad input, 1 for failures."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BAD_INPUT as err:
            raise fail(str(err), 2) from None
        except KNOWN as err:
            raise fail(str(err), 1) from None
        except OSError as err:  # full disk, permissions: say what and where, keep it short
            where = f"{err.filename}: " if err.filename else ""
            raise fail(f"{where}{err.strerror or err}", 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    return path


def check_output(path: Path) -> Path:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"{path}: folder {parent} does not exist")
    return path


def counting_progress() -> Progress:
    """A progress bar counting items (n of N) on stderr; silent when it is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    out.print(table)


def write_bench(name: str, result: dict[str, Any], json_path: Path | None) -> None:
    """Print a benchmark's figures as a table and write them as JSON if asked."""
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result["metrics"].items()]
    print_table(f"likeness bench {name}", ["metric", "value"], rows)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        err_console.print(f"wrote {json_path}", markup=False, highlight=False)
