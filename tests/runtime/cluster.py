"""Several real ``likeness serve`` nodes on one PostgreSQL, for the cross-node tests
(this module holds no tests).

:func:`start_cluster` starts the nodes (each with its own data dir, all warming up at
once) and, when asked, HAProxy in front of them from ``deploy/haproxy.cfg`` itself,
only its ports and its runtime socket changed, so the sample is what is tested. With
``shared`` the nodes get one folder for what docs/deploy.md says they must share:
``<data dir>/consent`` (keys, files) and ``<data dir>/avatars`` (prepared faces) are
symbolic links into it, as a shared mount would be on several machines.

:class:`PgProxy` puts a TCP proxy between one node and PostgreSQL that a test can
cut, the way a node loses its database: closed (connections reset, new ones refused)
or silent (nothing goes through and nothing says so, as on a cut link).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import shutil
import socket as unix
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiortc import RTCConfiguration

from runtime.rtc_client import CompanionClient
from tests.serving import Server, free_port

NO_STUN = RTCConfiguration(iceServers=[])  # a closed network: no public STUN host
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
SHARED = ("consent", "avatars")  # the data dir's folders every node must share


def haproxy() -> str | None:
    """Debian's HAProxy binary (``/usr/sbin`` is not on every test user's PATH)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


@dataclass
class Cluster:
    """The running nodes, by HAProxy server name, and the balancer when started."""

    nodes: dict[str, Server]
    url: str = ""  # the balancer; "" when none was started
    socket: Path | None = None  # HAProxy's runtime API
    log: Path | None = None

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
        """:meth:`stats` outside an event loop (the start-up)."""
        with unix.socket(unix.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            out = b"".join(iter(lambda: sock.recv(65536), b""))
        return _rows(out.decode())

    async def health(self, name: str) -> dict:
        """Node ``name``'s ``/health`` body."""
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{self.nodes[name].url}/health")).json()

    async def sessions(self) -> dict[str, int]:
        return {name: (await self.health(name))["sessions"] for name in self.nodes}


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


def share(data_dir: Path, shared: Path) -> None:
    """Make ``data_dir``'s consent and avatars folders links into ``shared``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in SHARED:
        (shared / folder).mkdir(parents=True, exist_ok=True)
        (data_dir / folder).symlink_to(shared / folder, target_is_directory=True)


@contextlib.contextmanager
def start_cluster(
    root: Path,
    database: str,
    *,
    env: Mapping[str, str] = {},  # noqa: B006 - read only
    databases: Mapping[str, str] = {},  # noqa: B006 - read only
    shared: Path | None = None,
    balancer: bool = True,
) -> Iterator[Cluster]:
    """Nodes ``a`` and ``b`` on ``database``, ready; stopped on exit.

    Args:
        root: a fresh folder; each node's data dir is ``root/<name>``.
        database: the consent database's URL (migrated here once, before the nodes
            start, as docs/deploy.md says: two nodes must not migrate at once, nor make
            the shared keys at once).
        env: ``LIKENESS_*`` settings of both nodes.
        databases: another URL for a node (by name), e.g. through a :class:`PgProxy`.
        shared: one folder for both nodes' ``consent`` and ``avatars`` (see the module);
            None gives each node its own.
        balancer: start HAProxy in front (the caller checks :func:`haproxy` first).
    """
    from runtime.components import consent_gate
    from runtime.config import load_config

    nodes = {}
    for name in ("a", "b"):
        if shared is not None:
            share(root / name, shared)
        else:
            (root / name).mkdir()
    # What `likeness consent list` does on the first node before any node starts: migrate
    # the database, and make the keys the nodes share (two nodes must not do it at once).
    first = load_config(data_dir=root / "a", consent={"database_url": database})
    consent_gate(first).store.close()
    for name in ("a", "b"):
        nodes[name] = Server(
            root / name,
            LIKENESS_CONSENT__DATABASE_URL=databases.get(name, database),
            LIKENESS_LOG_LEVEL="warning",
            **env,
        )
    with ThreadPoolExecutor(2) as pool:  # both warm up at once
        starts = [pool.submit(node.start) for node in nodes.values()]
    try:
        for start in starts:
            start.result()
        if not balancer:
            yield Cluster(nodes)
            return
        with _balancer(root, nodes) as running:
            yield running
    finally:
        for node in nodes.values():
            node.stop()


@contextlib.contextmanager
def _balancer(root: Path, nodes: dict[str, Server]) -> Iterator[Cluster]:
    binary = haproxy()
    assert binary is not None, "HAProxy is not installed: apt-get install -y haproxy"
    port, socket, log = free_port(), root / "haproxy.sock", root / "haproxy.log"
    config = root / "haproxy.cfg"
    config.write_text(_config(SAMPLE.read_text(), port, nodes["a"].port, nodes["b"].port, socket))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        running = Cluster(nodes, f"http://127.0.0.1:{port}", socket, log)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError, KeyError):
                stats = running.stats_now()
                if stats["a"]["status"] == stats["b"]["status"] == "UP":
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("HAProxy did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=10)


async def until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """Wait until ``check()`` is true (an HTTP or socket error counts as not yet)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, httpx.HTTPError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within_s} s: {what}")


async def open_client(url: str, **options) -> CompanionClient:
    """A connected session: the answer applied *and* the events channel open.

    Closed before its channel opens, a client cannot say goodbye and the node holds the
    session until ICE gives up, many seconds later. ``options`` go to
    :class:`CompanionClient` (video is not kept unless asked)."""
    client = CompanionClient(url, **({"keep_video": False, "configuration": NO_STUN} | options))
    await client.connect()
    await client.wait_for("state", 15)
    return client


class PgProxy:
    """A TCP proxy to PostgreSQL on ``127.0.0.1:port`` that a test can cut and restore.

    It runs its own event loop in a thread, so it keeps forwarding whatever the test's
    loop does. :meth:`cut` ``"closed"`` resets every connection and refuses new ones
    (the database went away: the client hears of it at once); ``"silent"`` forwards
    nothing more either way and answers no new connection, without a word (a cut
    link: only a timeout tells). :meth:`restore` drops whatever it held and forwards
    again. Call :meth:`close` at the end.
    """

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.mode = "open"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self._call(self._listen())

    def url(self, database: str) -> str:
        """``database`` (a URL on the target's port) through this proxy."""
        return database.replace(f":{self.target}/", f":{self.port}/")

    def cut(self, how: str) -> None:
        """Cut every connection, ``"closed"`` or ``"silent"`` (see the class)."""
        assert how in ("closed", "silent"), how
        self._call(self._cut(how))

    def restore(self) -> None:
        self._call(self._restore())

    def close(self) -> None:
        self._call(self._cut("closed"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: Awaitable) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _cut(self, how: str) -> None:
        self.mode = how  # silent: the connections stay open, and carry nothing
        if how == "closed":
            if self._server is not None:
                self._server.close()
                self._server = None
            self._drop()

    async def _restore(self) -> None:
        self._drop()  # held silent connections fail now, not at their timeout
        self.mode = "open"
        if self._server is None:
            await self._listen()

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, not a goodbye
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "open":  # silent: hold it, say nothing
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.mode == "open":  # silent: swallowed
                    writer.write(data)
                    await writer.drain()
        writer.close()
        self._writers.discard(writer)
