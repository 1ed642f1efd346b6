"""The ``likeness`` command line.

Conventions every command follows: bad input exits with code 2 and one line on
stderr; other failures exit 1; long work shows a progress bar on stderr;
``likeness bench <what> [--json PATH]`` prints a table and writes JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from runtime.cli_avatar import avatar_app, register_avatar_commands
from runtime.cli_bench import bench_app
from runtime.cli_common import (
    check_output,
    err_console,
    fail,
    handle_errors,
    out,
    require_file,
    state,
)
from runtime.cli_consent import consent_app
from runtime.cli_export import export_app
from runtime.cli_train import train_app
from runtime.config import masked_dump
from runtime.errors import ConfigError, InputError

app = typer.Typer(
    name="likeness",
    help="A runtime for digital companions that talk face to face.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(avatar_app, name="avatar")
app.add_typer(consent_app, name="consent")
app.add_typer(train_app, name="train")
app.add_typer(export_app, name="export")
register_avatar_commands(app, bench_app)


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
        settings, require_file(audio, "audio file"), model=model, language=language
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
    result = asyncio.run(say_to_file(settings, text, check_output(output), backend=backend))
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
        listen_file(settings, require_file(audio, "audio file"), check_output(output), person)
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
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (https)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key")] = None,
) -> None:
    """Serve the companion: web pages, WebRTC sessions, /health and /metrics."""
    import uvicorn

    from runtime.memory import limit_arenas
    from runtime.server import create_app

    settings = state.load()
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "tls_cert": str(tls_cert) if tls_cert else None,
            "tls_key": str(tls_key) if tls_key else None,
        }.items()
        if v is not None
    }
    server = settings.server.model_copy(update=changes)
    settings = settings.model_copy(update={"server": server})
    if bool(server.tls_cert) != bool(server.tls_key):
        raise InputError("give both --tls-cert and --tls-key, or neither")
    for pem in (server.tls_cert, server.tls_key):
        if pem:
            require_file(Path(pem), "PEM file")
    scheme = "https" if server.tls_cert else "http"
    shown = "localhost" if server.host in ("127.0.0.1", "0.0.0.0") else server.host
    err_console.print(
        f"likeness: loading models, then open {scheme}://{shown}:{server.port}/ "
        f"(kiosk: {scheme}://{shown}:{server.port}/kiosk.html)",
        markup=False,
        highlight=False,
    )
    limit_arenas(server.malloc_arenas)  # before the model threads start (runtime/memory.py)
    uvicorn.run(
        create_app(settings),
        host=server.host,
        port=server.port,
        ssl_certfile=server.tls_cert or None,
        ssl_keyfile=server.tls_key or None,
        log_config=None,
        lifespan="on",
    )


@app.command()
@handle_errors
def demo() -> None:
    """The offline voice loop: a spoken question answered, shown on the synthetic face,
    then chat in text. (`make demo` runs `likeness serve`.)"""
    from runtime.voiceloop import run_demo

    asyncio.run(run_demo(state.load(), interactive=sys.stdin.isatty()))


def main() -> None:
    """Entry point of the ``likeness`` script."""
    try:
        app()
    except ConfigError as err:  # raised while loading config inside a command
        fail(str(err))
        sys.exit(2)
