"""The soak benchmark through NAT and TURN: ``likeness bench soak --via-turn --minutes 12``.

:func:`runtime.bench_soak.bench_soak` run inside the network lab (:mod:`runtime.netlab`):
a fresh ``likeness serve`` in the lab's server namespace, coturn beside it, and the
soak's scripted aiortc client behind the lab's NAT, relay-only with the ICE servers
and TURN credential the server hands out (``POST /api/rtc/ice``). The session must
outlive coturn's permission (300 s) and channel (600 s) lifetimes: run it for at least
12 minutes. What coturn saw (allocations, refreshes, permission and channel renewals,
refusals) is added to the result under ``"turn"``.

The soak is handed the lab server's URL, so it reads the server's open tasks from
``/health`` (through the NAT) but not its RSS: the plain soak measures memory.

Needs root (namespaces, iptables) and coturn: see :func:`runtime.netlab.unavailable`.
``likeness bench soak --via-turn`` calls :func:`soak_via_turn`.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from runtime.netlab import NetLab

COTURN_EVENTS = {
    "allocations": r"ALLOCATE processed, success",
    "refreshes": r"REFRESH processed, success",
    "permissions": r"CREATE_PERMISSION processed, success",
    "channel_binds": r"CHANNEL_BIND processed, success",
    "refused": r"error 4\d\d",
    "closed": r"closed \(2nd stage\)",
}


def coturn_summary(log: str) -> dict[str, int]:
    """Counts of what coturn logged (see :data:`COTURN_EVENTS`); the 401 every client
    gets before it authenticates counts under ``refused`` too."""
    return {name: len(re.findall(pattern, log)) for name, pattern in COTURN_EVENTS.items()}


def soak_via_turn(
    minutes: int,
    seed: int = 0,
    server_env: dict[str, str] | None = None,
    on_minute: Callable[[dict[str, float]], None] | None = None,
) -> dict:
    """One soak through the lab's NAT and coturn, relay-only; the soak's result plus
    ``"turn"`` (coturn's counts) and ``config.via_turn``. ``on_minute`` as in
    :func:`runtime.bench_soak.bench_soak` (called from the lab's client thread).

    Raises:
        runtime.netlab.NetLabError: the lab, coturn or the server could not start.
        runtime.turn.RelayUnavailableError: no relay candidate (coturn refused).
    """
    import asyncio

    from runtime.bench_soak import SoakOptions, bench_soak
    from runtime.turn import page_ice

    secret = secrets.token_urlsafe(24)
    with NetLab() as lab, tempfile.TemporaryDirectory(prefix="likeness-relay-soak-") as tmp:
        lab.start_coturn(secret)
        env = {"LIKENESS_SERVER__MAX_SESSIONS": "1", "LIKENESS_LOG_LEVEL": "warning"}
        with lab.companion(Path(tmp), secret, env | (server_env or {})) as (url, _pid):
            rtc = lab.call("client", lambda: asyncio.run(page_ice(url)), 60)
            options = SoakOptions(minutes=minutes, seed=seed, url=url, rtc=rtc)
            result = lab.call("client", lambda: bench_soak(options, on_minute), None)
        assert lab.coturn is not None
        turn_log = lab.coturn.log_text()
    result["config"]["via_turn"] = {
        "policy": "relay",
        "nat": "iptables MASQUERADE (network namespaces)",
        "relay": "coturn (use-auth-secret)",
    }
    result["turn"] = coturn_summary(turn_log)
    return result
