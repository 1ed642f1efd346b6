"""``likeness bench ...``: the benchmark commands. Each prints a table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from runtime.cli_common import (
    counting_progress,
    err_console,
    handle_errors,
    print_table,
    state,
    write_bench,
)
from runtime.cli_soak import register_soak_command
from runtime.errors import InputError

bench_app = typer.Typer(help="Benchmarks: print a table, write JSON.", no_args_is_help=True)
register_soak_command(bench_app)


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
    face_backend: Annotated[
        str, typer.Option(help="the face backend that judges (mediapipe, dlib)")
    ] = "mediapipe",
) -> None:
    """Time to verify one liveness clip; with --attacks, the live ceremony's attack suite."""
    from avatar.face import BACKENDS
    from runtime.bench import machine_info

    state.load()
    if face_backend not in BACKENDS:
        raise InputError(f"unknown face backend {face_backend!r}; known: {', '.join(BACKENDS)}")
    if attacks:
        options = (bona_fide, per_class, only, jobs, seed, face_backend)
        _bench_attacks(json_path, *options, machine_info())
        return
    from consent.liveness.bench import bench_liveness

    metrics = bench_liveness(seconds=seconds, backend=face_backend)
    write_bench(
        "consent",
        {
            "bench": "consent",
            "machine": machine_info(),
            "config": {"seconds": seconds, "face_backend": face_backend},
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
    face_backend: str,
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
            backend=face_backend,
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
            "face_backend": face_backend,
        },
        **result,
    }
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result["metrics"].items()]
    print_table("figures", ["metric", "value"], rows)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(body, indent=2) + "\n")
        err_console.print(f"wrote {json_path}", markup=False, highlight=False)


@bench_app.command("face")
@handle_errors
def bench_face(
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    frames: Annotated[int, typer.Option(min=10, max=5000, help="video frames per backend")] = 300,
    backend: Annotated[
        str, typer.Option(help="face backends, comma-separated: dlib, mediapipe")
    ] = "dlib,mediapipe",
) -> None:
    """Face tracking, ONE core: landmarks + head pose per frame of a moving 512 px face."""
    from avatar.face.bench import BENCH_BACKENDS, bench_face_tracking
    from runtime.animation import pin_to_one_core
    from runtime.bench import machine_info

    names = tuple(b.strip().lower() for b in backend.split(",") if b.strip())
    unknown = [b for b in names if b not in BENCH_BACKENDS]
    if unknown or not names:
        raise InputError(f"unknown face backends {unknown}; known: {', '.join(BENCH_BACKENDS)}")
    state.load()
    core = pin_to_one_core()
    result = bench_face_tracking(names, frames)
    body = {
        "bench": "face",
        "machine": {**machine_info(), "pinned_core": core},
        "config": {"backends": list(names), "frames": frames, "size": 512, "threads": 1},
        **result,
    }
    write_bench("face", body, json_path)


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


@bench_app.command("conversation")
@handle_errors
def bench_conversation(
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    short: Annotated[bool, typer.Option("--short", help="only the CI's handful")] = False,
    eldercare: Annotated[
        bool | None, typer.Option("--eldercare/--no-eldercare", help="default: as configured")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0, max=2, help="default: dialogue.temperature")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="no reply guard: the model alone")] = False,
) -> None:
    """Conversation quality: scripted exchanges, fixed checks, pass rates per check/situation."""
    from runtime.bench_conversation import bench_conversation as run
    from runtime.convsuite.exchanges import exchanges
    from runtime.convsuite.runner import check_rows, situation_rows

    settings = state.load()
    with counting_progress() as progress:
        task = progress.add_task("exchanges", total=len(exchanges(short)))
        result = run(
            settings,
            short=short,
            eldercare=eldercare,
            temperature=temperature,
            guard=not raw,
            on_exchange=lambda _result: progress.advance(task),
        )
    config = result["config"]
    title = f"{config['backend']} ({config['model']}), temperature {config['temperature']}" + (
        "" if config["guard"] else ", no guard"
    )
    print_table(f"checks: {title}", ["check", "exchanges passed", "rate"],
                check_rows(result["summary"]))  # fmt: skip
    print_table("situations", ["situation", "exchanges passed", "rate", "failing checks"],
                situation_rows(result["summary"]))  # fmt: skip
    write_bench("conversation", result, json_path)
