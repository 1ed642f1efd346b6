"""The ``likeness`` command line.

Conventions every command follows: bad input exits with code 2 and one line on
stderr; other failures exit 1; long work shows a progress bar on stderr;
``likeness bench <what> [--json PATH]`` prints a table and writes JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import avatar
import consent
import voice
from runtime.config import Settings, ensure_data_dir, load_config, masked_dump
from runtime.errors import ConfigError, InputError, LikenessError
from runtime.logs import setup_logging
from voice.errors import AudioInputError, ModelNotFoundError

app = typer.Typer(
    name="likeness",
    help="A runtime for digital companions that talk face to face.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print a table, write JSON.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

out = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)

BAD_INPUT = (ConfigError, InputError, AudioInputError, ModelNotFoundError)
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


@app.callback()
def _main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file (or LIKENESS_CONFIG)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="state directory (or LIKENESS_DATA_DIR)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None,
) -> None:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if log_level is not None:
        overrides["log_level"] = log_level
    state.config_path = config
    state.overrides = overrides
    state.settings = None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    return path


def _check_output(path: Path) -> Path:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"{path}: folder {parent} does not exist")
    return path


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    out.print(table)


# ---------------------------------------------------------------- config / doctor


def _print_setting(key: str, value: Any) -> None:
    line = f"# {key} is unset" if value is None else f"{key} = {json.dumps(value)}"
    out.print(line, markup=False, highlight=False)


@config_app.command("show")
@handle_errors
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of TOML-ish")] = False,
) -> None:
    """Print the effective configuration, secrets masked."""
    data = masked_dump(state.load())
    if as_json:
        out.print_json(json.dumps(data))
        return
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for key, value in flat.items():
        _print_setting(key, value)
    for section, values in nested.items():
        out.print(f"\n[{section}]", markup=False, highlight=False)
        for key, value in values.items():
            _print_setting(key, value)


@app.command()
@handle_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Check Python, system packages, models, GPU providers, ports and the data dir."""
    from dataclasses import asdict

    from runtime.doctor import run_checks

    checks = run_checks(state.load())
    failed = [c.name for c in checks if c.status == "fail"]
    if as_json:
        out.print_json(json.dumps([asdict(c) for c in checks]))
        if failed:
            raise typer.Exit(1)
        return
    marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    table = Table(title="likeness doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(
            escape(check.name), marks[check.status], escape(check.detail), escape(check.fix)
        )
    out.print(table)
    if failed:
        raise fail(f"{len(failed)} check(s) failed: {', '.join(failed)}", 1)


# ---------------------------------------------------------------- voice commands


@app.command()
@handle_errors
def transcribe(
    audio: Annotated[Path, typer.Argument(help="audio file (any rate; resampled to 16 kHz)")],
    model: Annotated[str | None, typer.Option(help="hub name or local path")] = None,
    language: Annotated[str | None, typer.Option(help="ISO code; default from config")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON with turn times")] = False,
) -> None:
    """Transcribe an audio file, turn by turn (VAD), with a progress bar."""
    from runtime.voiceloop import transcribe_file

    settings = state.load()
    transcripts = transcribe_file(
        settings, _require_file(audio, "audio file"), model=model, language=language
    )
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {"start": t.start, "end": t.end, "text": t.text, "language": t.language}
                    for t in transcripts
                ]
            )
        )
    else:
        for t in transcripts:
            out.print(t.text, markup=False, highlight=False)


@app.command()
@handle_errors
def say(
    text: Annotated[str, typer.Argument(help="what to say")],
    output: Annotated[Path, typer.Option("-o", "--output", help="WAV file to write")] = Path(
        "say.wav"
    ),
    backend: Annotated[str | None, typer.Option(help="piper, espeak or coqui")] = None,
) -> None:
    """Speak TEXT into a WAV file (streamed sentence by sentence)."""
    from runtime.voiceloop import say_to_file

    if not text.strip():
        raise InputError("nothing to say: TEXT is empty")
    settings = state.load()
    result = asyncio.run(say_to_file(settings, text, _check_output(output), backend=backend))
    err_console.print(
        f"wrote {result.path} ({result.duration:.2f} s, first audio after "
        f"{result.first_audio_s * 1000:.0f} ms)",
        markup=False,
        highlight=False,
    )


@app.command()
@handle_errors
def chat(
    person: Annotated[str, typer.Option(help="whose conversation memory to use")] = "default",
    audio_dir: Annotated[
        Path | None, typer.Option(help="write each spoken reply here (default: data dir)")
    ] = None,
    speak: Annotated[bool, typer.Option(help="synthesise each reply to a WAV")] = True,
) -> None:
    """Talk in text: your line in, the reply streamed as text and spoken to WAV."""
    from runtime.voiceloop import chat_loop

    settings = state.load()
    asyncio.run(chat_loop(settings, person=person, audio_dir=audio_dir, speak=speak))


@app.command()
@handle_errors
def listen(
    audio: Annotated[Path, typer.Argument(help="a recording of someone speaking")],
    output: Annotated[Path, typer.Option("-o", "--output", help="reply WAV")] = Path("reply.wav"),
    person: Annotated[str, typer.Option(help="whose conversation memory to use")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="print the turns as JSON")] = False,
) -> None:
    """The whole voice loop on a file: VAD turns → transcript → reply → reply WAV."""
    from runtime.voiceloop import listen_file

    settings = state.load()
    report = asyncio.run(
        listen_file(settings, _require_file(audio, "audio file"), _check_output(output), person)
    )
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    for turn in report.turns:
        out.print(f"you: {turn.transcript}", markup=False, highlight=False)
        if turn.alert:
            out.print(f"[bold red]ALERT ({turn.alert})[/]")
        out.print(f"{settings.persona.name}: {turn.reply}", markup=False, highlight=False)
    err_console.print(f"wrote {report.output}", markup=False, highlight=False)


@app.command()
@handle_errors
def demo() -> None:
    """Run the embedded companion: a spoken question answered offline, then chat."""
    from runtime.voiceloop import run_demo

    asyncio.run(run_demo(state.load(), interactive=sys.stdin.isatty()))


# ---------------------------------------------------------------- benchmarks


def write_bench(name: str, result: dict[str, Any], json_path: Path | None) -> None:
    """Print a benchmark's figures as a table and write them as JSON if asked."""
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result["metrics"].items()]
    print_table(f"likeness bench {name}", ["metric", "value"], rows)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        err_console.print(f"wrote {json_path}", markup=False, highlight=False)


@bench_app.command("voice")
@handle_errors
def bench_voice(
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=100, help="runs per measurement")] = 5,
) -> None:
    """ASR real-time factor, TTS first audio and RTF, LLM time to first token."""
    from runtime.bench import bench_voice as run

    write_bench("voice", run(state.load(), repeats=repeats), json_path)


def main() -> None:
    """Entry point of the ``likeness`` script."""
    try:
        app()
    except ConfigError as err:  # raised while loading config inside a command
        fail(str(err))
        sys.exit(2)
