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
from runtime.cli_common import (
    check_output,
    counting_progress,
    err_console,
    fail,
    handle_errors,
    out,
    print_table,
    require_file,
    state,
    write_bench,
)
from runtime.cli_consent import consent_app
from runtime.cli_export import export_app
from runtime.cli_soak import register_soak_command
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
bench_app = typer.Typer(help="Benchmarks: print a table, write JSON.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(avatar_app, name="avatar")
app.add_typer(consent_app, name="consent")
app.add_typer(train_app, name="train")
app.add_typer(export_app, name="export")
register_avatar_commands(app, bench_app)
register_soak_command(bench_app)


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


# ---------------------------------------------------------------- benchmarks


@bench_app.command("voice")
@handle_errors
def bench_voice(
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=100, help="runs per measurement")] = 5,
) -> None:
    """ASR real-time factor, TTS first audio and RTF, LLM time to first token."""
    from runtime.bench import bench_voice as run

    write_bench("voice", run(state.load(), repeats=repeats), json_path)


@bench_app.command("consent")
@handle_errors
def bench_consent(
    seconds: Annotated[float, typer.Option(min=5, max=60, help="length of the test clip")] = 20,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    attacks: Annotated[
        bool, typer.Option("--attacks", help="run the attack suite: APCER per class, BPCER")
    ] = False,
    bona_fide: Annotated[int, typer.Option(min=0, max=500, help="genuine ceremonies")] = 40,
    per_class: Annotated[int, typer.Option(min=0, max=100, help="attacks of each class")] = 5,
    only: Annotated[
        str | None, typer.Option(help="attack classes to run, comma-separated (default: all)")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="worker processes")] = 1,
    seed: Annotated[int, typer.Option(help="varies plans, timings and noise")] = 0,
) -> None:
    """Time to verify one liveness clip; with --attacks, the live ceremony's attack suite."""
    from runtime.bench import machine_info

    state.load()
    if attacks:
        _bench_attacks(json_path, bona_fide, per_class, only, jobs, seed, machine_info())
        return
    from consent.liveness.bench import bench_liveness

    metrics = bench_liveness(seconds=seconds)
    write_bench(
        "consent",
        {
            "bench": "consent",
            "machine": machine_info(),
            "config": {"seconds": seconds},
            "metrics": metrics,
        },
        json_path,
    )


def _bench_attacks(
    json_path: Path | None,
    bona_fide: int,
    per_class: int,
    only: str | None,
    jobs: int,
    seed: int,
    machine: dict,
) -> None:
    from consent.ceremony.attacks import ATTACKS
    from consent.ceremony.bench import bench_attacks, table_rows

    classes = ATTACKS if not only else tuple(c.strip() for c in only.split(",") if c.strip())
    unknown = [c for c in classes if c not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack classes {unknown}; known: {', '.join(ATTACKS)}")
    total = bona_fide + per_class * len(classes)
    with counting_progress() as progress:
        task = progress.add_task("ceremonies", total=total)
        result = bench_attacks(
            bona_fide,
            per_class,
            classes,
            seed=seed,
            jobs=jobs,
            on_run=lambda _run: progress.advance(task),
        )
    print_table(
        "likeness bench consent --attacks",
        ["class", "runs", "APCER / BPCER", "caught by (failed points)"],
        table_rows(result),
    )
    body = {
        "bench": "consent-attacks",
        "machine": machine,
        "config": {
            "bona_fide": bona_fide,
            "per_class": per_class,
            "classes": list(classes),
            "seed": seed,
            "jobs": jobs,
        },
        **result,
    }
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result["metrics"].items()]
    print_table("figures", ["metric", "value"], rows)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(body, indent=2) + "\n")
        err_console.print(f"wrote {json_path}", markup=False, highlight=False)


@bench_app.command("session")
@handle_errors
def bench_session(
    sessions: Annotated[int, typer.Option(min=1, max=64, help="concurrent sessions")] = 1,
    sweep: Annotated[bool, typer.Option(help="try 1, 2, 4, ... up to --sessions")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    url: Annotated[str | None, typer.Option(help="a running server (default: start one)")] = None,
) -> None:
    """N concurrent WebRTC sessions: stage latency p50/p95, fps, drops, CPU and memory."""
    from runtime.bench_session import bench_session as run

    state.load()
    result = run(sessions, sweep=sweep, url=url)
    write_bench("session", result, json_path)
    for row in result["runs"]:
        verdict = "ok" if row["ok"] else "over the limit"
        err_console.print(
            f"{row['sessions']} session(s): {row['fps_min']:.1f} fps min, "
            f"voice end → first audio p95 {row.get('first_audio_sent_p95_ms', float('nan')):.0f} ms"
            f" — {verdict}",
            markup=False,
            highlight=False,
        )


@bench_app.command("turns")
@handle_errors
def bench_turns(
    turns: Annotated[int, typer.Option(min=1, max=16, help="questions in one session")] = 12,
    runs: Annotated[int, typer.Option(min=1, max=20, help="fresh servers, one session each")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    url: Annotated[str | None, typer.Option(help="a running server (default: start one)")] = None,
) -> None:
    """Turn latency per turn index at the client: the first turn of a fresh server vs later."""
    from runtime.bench_turns import bench_turns as run

    state.load()
    result = run(turns, runs=runs, url=url)
    write_bench("turns", result, json_path)
    for row in result["per_turn"]:
        err_console.print(
            f"turn {row['turn']:2d}: end of speech → first reply audio at the client "
            f"{row.get('client_first_audio_p50_ms', float('nan')):.0f} ms (p50)",
            markup=False,
            highlight=False,
        )


def main() -> None:
    """Entry point of the ``likeness`` script."""
    try:
        app()
    except ConfigError as err:  # raised while loading config inside a command
        fail(str(err))
        sys.exit(2)
