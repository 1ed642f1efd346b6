"""Two ``likeness serve`` nodes on one PostgreSQL consent store behind HAProxy.

The balancer runs ``deploy/haproxy.cfg`` itself, only its ports and its runtime socket
changed, so the sample is what is tested. Each node takes one session
(``server.max_sessions = 1``) so that "full" is one client away. Real aiortc clients
make the offers; their media then goes straight to the node that answered.

Skipped only when Debian's ``haproxy`` or PostgreSQL binaries are missing
(``make setup`` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import shutil
import socket as unix
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration

from runtime.rtc_client import CompanionClient
from tests.consent.conftest import pg_cluster  # noqa: F401 - the throwaway PostgreSQL
from tests.serving import Server, free_port

pytestmark = pytest.mark.slow

NO_STUN = RTCConfiguration(iceServers=[])  # a closed network: no public STUN host
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def _haproxy() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


@dataclass
class Cluster:
    url: str  # the balancer
    nodes: dict[str, Server]  # by HAProxy server name
    socket: Path  # HAProxy's runtime API
    log: Path

    async def command(self, line: str) -> str:
        """One command of HAProxy's runtime API; its whole answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        writer.write(line.encode() + b"\n")
        await writer.drain()
        out = await reader.read()
        writer.close()
        return out.decode()

    async def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend, by server name (and ``BACKEND``)."""
        return _rows(await self.command("show stat"))

    def stats_now(self) -> dict[str, dict[str, str]]:
        """:meth:`stats` outside an event loop (the fixture's start-up)."""
        with unix.socket(unix.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            out = b"".join(iter(lambda: sock.recv(65536), b""))
        return _rows(out.decode())

    async def sessions(self) -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as http:
            return {
                name: (await http.get(f"{node.url}/health")).json()["sessions"]
                for name, node in self.nodes.items()
            }


def _rows(show_stat: str) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(line for line in show_stat.lstrip("# ").splitlines() if line)
    return {row["svname"]: row for row in rows if row["pxname"] == "nodes"}


def _config(text: str, port: int, a: int, b: int, socket: Path) -> str:
    for old, new in (
        ("bind :8000", f"bind 127.0.0.1:{port}"),
        ("127.0.0.1:8001", f"127.0.0.1:{a}"),
        ("127.0.0.1:8002", f"127.0.0.1:{b}"),
        ("/run/haproxy/likeness.sock", str(socket)),
    ):
        assert text.count(old) == 1, f"deploy/haproxy.cfg no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    haproxy = _haproxy()
    if haproxy is None:
        pytest.skip("HAProxy is not installed: apt-get install -y haproxy (make setup)")
    database = request.getfixturevalue("pg_cluster").new_database()
    root = tmp_path_factory.mktemp("balancer")
    from consent.store import ConsentStore

    # Migrate once before the nodes start, as docs/deploy.md says (not two at once).
    ConsentStore.open(root / "migrate", url=database).close()
    nodes = {}
    for name in ("a", "b"):
        (root / name).mkdir()
        nodes[name] = Server(
            root / name,
            LIKENESS_SERVER__MAX_SESSIONS="1",
            LIKENESS_CONSENT__DATABASE_URL=database,
            LIKENESS_LOG_LEVEL="warning",
        )
    with ThreadPoolExecutor(2) as pool:  # both warm up at once
        starts = [pool.submit(node.start) for node in nodes.values()]
    try:
        for start in starts:
            start.result()
        port, socket, log = free_port(), root / "haproxy.sock", root / "haproxy.log"
        config = root / "haproxy.cfg"
        config.write_text(
            _config(SAMPLE.read_text(), port, nodes["a"].port, nodes["b"].port, socket)
        )
        with open(log, "w") as out:
            balancer = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            running = Cluster(f"http://127.0.0.1:{port}", nodes, socket, log)
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(OSError, KeyError):
                    stats = running.stats_now()
                    if stats["a"]["status"] == stats["b"]["status"] == "UP":
                        break
                if time.monotonic() > deadline or balancer.poll() is not None:
                    raise RuntimeError("HAProxy did not start:\n" + log.read_text()[-3000:])
                time.sleep(0.1)
            yield running
        finally:
            balancer.terminate()
            balancer.wait(timeout=10)
    finally:
        for node in nodes.values():
            node.stop()


async def _until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, httpx.HTTPError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within_s} s: {what}")


async def _all_up(cluster: Cluster) -> bool:
    stats = await cluster.stats()
    return all(stats[name]["status"] == "UP" for name in cluster.nodes)


async def _settled(cluster: Cluster) -> None:
    """Every session closed and both nodes back in rotation (what each test starts from)."""

    async def idle() -> bool:
        return set((await cluster.sessions()).values()) == {0} and await _all_up(cluster)

    await _until(idle, 20, "sessions closed and both nodes UP")


async def _open(url: str) -> CompanionClient:
    """A connected session: the answer applied *and* the events channel open.

    Closed before its channel opens, a client cannot say goodbye and the node holds the
    session until ICE gives up, many seconds later."""
    client = CompanionClient(url, keep_video=False, configuration=NO_STUN)
    await client.connect()
    await client.wait_for("state", 15)
    return client


async def test_offers_land_on_both_nodes_and_a_full_cluster_says_busy(cluster):
    await _settled(cluster)
    first = await _open(cluster.url)
    second = await _open(cluster.url)
    try:
        assert await cluster.sessions() == {"a": 1, "b": 1}, "one offer answered by each node"
        third = CompanionClient(cluster.url, keep_video=False, configuration=NO_STUN)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await third.connect()
        await third.pc.close()
        assert refused.value.response.status_code == 503, refused.value.response.text
        assert refused.value.response.headers.get("retry-after")
    finally:
        await first.close()
        await second.close()


async def test_the_room_check_takes_a_full_node_out_and_back(cluster):
    await _settled(cluster)
    direct = await _open(cluster.nodes["a"].url)  # node A full, the balancer not involved
    try:
        down = time.monotonic()

        async def a_down() -> bool:
            return (await cluster.stats())["a"]["status"] == "DOWN"

        await _until(a_down, 5, "HAProxy's /health/room check marks the full node DOWN")
        print(f"full node out of rotation {time.monotonic() - down:.1f} s after it filled")
        through = await _open(cluster.url)
        try:
            assert await cluster.sessions() == {"a": 1, "b": 1}, "the offer went to node B"
        finally:
            await through.close()
    finally:
        await direct.close()
    await _settled(cluster)  # node A back UP once a session is free


async def test_a_full_nodes_503_moves_the_offer_to_the_next_node(cluster):
    """Between two checks a node can fill up unseen: its 503 must not reach the client.

    Node A's check is paused (it stays UP in HAProxy although full), so only the
    retry (``retry-on 503``, ``option redispatch``) can save offers sent to it."""
    await _settled(cluster)
    await cluster.command("disable health nodes/a")
    direct = await _open(cluster.nodes["a"].url)
    try:
        before = await cluster.stats()
        # In rotation, unchecked: HAProxy does not know node A is full.
        assert before["a"]["status"] == "no check", before["a"]["status"]
        for _ in range(2):  # both nodes idle to HAProxy: leastconn tries A first at least once
            through = await _open(cluster.url)  # raises on a 503
            try:
                assert await cluster.sessions() == {"a": 1, "b": 1}, "the offer went to B"
            finally:
                await through.close()

            async def b_free() -> bool:
                # Free, and seen free by HAProxy: while B's check still fails, A is the
                # only node in rotation and its 503 has nowhere to go (the client gets it).
                free = (await cluster.sessions())["b"] == 0
                return free and (await cluster.stats())["b"]["status"] == "UP"

            await _until(b_free, 15, "node B's session closed and B back in rotation")
        after = await cluster.stats()
        redispatched = int(after["BACKEND"]["wredis"]) - int(before["BACKEND"]["wredis"])
        assert redispatched >= 1, "no offer was sent to the full node A and moved on"
    finally:
        await direct.close()
        await cluster.command("enable health nodes/a")
    await _settled(cluster)
