"""``likeness bench soak``: the command line of :mod:`runtime.bench_soak`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from runtime.cli_common import err_console, handle_errors, print_table, state, write_bench


class SoakPage(StrEnum):
    """Pages ``--page`` can soak in headless Chromium."""

    kiosk = "kiosk"


def bench_soak(
    minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="length of the session")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="question order, voices and timing")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    url: Annotated[str | None, typer.Option(help="a running server (default: start one)")] = None,
    via_turn: Annotated[
        bool, typer.Option("--via-turn", help="client behind a NAT, relay-only via coturn (root)")
    ] = False,
    server_nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="the fresh server's CPU priority below the client's: on one machine the "
            "client then stands in for a device of its own",
        ),
    ] = 0,
    page: Annotated[
        SoakPage | None,
        typer.Option(help="soak this page in headless Chromium instead (runtime.page_soak)"),
    ] = None,
) -> None:
    """One long live session: fps, freezes, audio gaps, A/V offset, turn latency, RSS and
    tasks per minute, and the soak targets as pass / fail."""
    if page is not None:
        _page_soak(page.value, minutes, seed, json_path, url, via_turn, server_nice)
        return
    from runtime.bench_soak import (
        MINUTE_COLUMNS,
        SoakOptions,
        minute_table,
        progress_line,
        target_table,
    )
    from runtime.bench_soak import bench_soak as run
    from runtime.errors import InputError

    state.load()

    def progress(row: dict[str, float]) -> None:
        err_console.print(progress_line(row, minutes), markup=False, highlight=False)

    if via_turn:  # runtime.relay_soak: the same soak inside runtime.netlab
        from runtime.relay_soak import soak_via_turn

        if url is not None or server_nice:
            raise InputError(
                "--via-turn starts its own server in the lab: leave out --url and --server-nice"
            )
        result = soak_via_turn(minutes, seed, on_minute=progress)
        err_console.print(f"coturn: {result['turn']}", markup=False, highlight=False)
    else:
        if url is not None and server_nice:
            raise InputError("--server-nice is for the server the bench starts: leave out --url")
        opts = SoakOptions(minutes=minutes, seed=seed, url=url, server_nice=server_nice)
        result = run(opts, on_minute=progress)
    write_bench("soak", result, json_path)
    print_table("per minute", MINUTE_COLUMNS, minute_table(result["runs"]["minutes"]))
    print_table("targets", ["target", "asked", "measured", "result"], target_table(result))


def _page_soak(page, minutes, seed, json_path, url, via_turn, server_nice) -> None:
    from runtime.errors import InputError
    from runtime.page_soak import PageSoakOptions, bench_page_soak
    from runtime.page_soak_metrics import MINUTE_COLUMNS, minute_table, progress_line, target_table

    if via_turn or (url is not None and server_nice):
        raise InputError("--page: leave out --via-turn, and --server-nice with --url")
    state.load()
    opts = PageSoakOptions(minutes, page, seed, url=url, server_nice=server_nice)
    result = bench_page_soak(
        opts,
        on_minute=lambda row: err_console.print(
            progress_line(row, minutes), markup=False, highlight=False
        ),
    )
    write_bench("soak", result, json_path)
    print_table("per minute", MINUTE_COLUMNS, minute_table(result["runs"]["minutes"]))
    print_table("targets", ["target", "asked", "measured", "result"], target_table(result))


def register_soak_command(bench_app: typer.Typer) -> None:
    """Add ``bench soak``."""
    bench_app.command("soak")(handle_errors(bench_soak))
