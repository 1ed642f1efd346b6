"""A network lab on one machine: a client behind NAT, a TURN relay, a server, packet loss.

Built from network namespaces (``ip netns``) joined by veth pairs, so nothing touches
the machine's own network namespace (other programs' ICE gathering sees no new
interfaces)::

    client ns            router ns (NAT)                 wan ns: bridge br0
    c0 10.77.1.2 ─veth─ r0 10.77.1.1 │ r1 10.77.2.1 ─veth─┤
                        MASQUERADE out r1; loss here      ├─veth─ server ns  s0 10.77.2.2
                                                          └─veth─ turn ns    t0 10.77.2.3 (coturn)

The client reaches the public side only through the router's NAT; the public side has
no route back to 10.77.1.0/24. coturn (Debian's ``turnserver``) runs with
``use-auth-secret`` and relays only to the server's address (``allowed-peer-ip``), as a
deployment should configure it (see docs/deployment.md). Packet loss uses
``iptables -m statistic --mode random --probability p -j DROP`` on the router's
FORWARD chain, both directions (this kernel has no netem).

Use it as a context manager; it removes its namespaces and ends every process it
started on exit, also when the body raised. A lab left behind by a killed process
(names carry the owner's pid) is swept by the next lab.

    with NetLab() as lab:
        lab.start_coturn(secret)
        with lab.companion(data_dir, secret) as (url, pid):   # likeness serve, relay-only
            lab.set_loss(0.05)
            lab.call("client", lambda: asyncio.run(client(url)))   # its sockets: client ns

Needs root, ``ip`` (iproute2), ``iptables`` and, for TURN, ``turnserver`` (coturn);
:func:`unavailable` says what is missing in words (tests skip on it when not root).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import LikenessError

NS_PREFIX = "likeness-lab"
CLONE_NEWNET = 0x40000000
TURN_PORT = 3478
_counter = itertools.count()
T = TypeVar("T")


class NetLabError(LikenessError, RuntimeError):
    """The lab could not be built or a command in it failed (the message says which)."""


@dataclass(frozen=True, slots=True)
class Addresses:
    """The lab's fixed addresses (the same in every lab: each lab has its own namespaces)."""

    client: str = "10.77.1.2"
    router_lan: str = "10.77.1.1"
    router_wan: str = "10.77.2.1"
    server: str = "10.77.2.2"
    turn: str = "10.77.2.3"


def unavailable() -> str | None:
    """Why a lab cannot be built here (in words), or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, iptables)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (Debian package {package})"
    return None


def _run(argv: Sequence[str], check: bool = True, timeout: float = 20) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise NetLabError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove labs whose owning process is gone (their processes too); returns their names."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if not name.startswith(NS_PREFIX + "-") or len(parts) < 5 or not parts[2].isdigit():
            continue
        if _pid_alive(int(parts[2])):
            continue
        _kill_namespace(name)
        removed.append(name)
    return removed


def _kill_namespace(name: str) -> None:
    for pid in _run(["ip", "netns", "pids", name], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _run(["ip", "netns", "del", name], check=False)


class Coturn:
    """A running coturn, started by :meth:`NetLab.start_coturn`."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def log_text(self) -> str:
        """coturn's log so far (for failure messages and refusals)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class NetLab:
    """One lab: five namespaces, NAT, optional coturn and loss. See the module doc.

    Args:
        addresses: the lab's addresses (the defaults suit every test).

    Raises:
        NetLabError: on entry, when :func:`unavailable` or a command failed.
    """

    def __init__(self, addresses: Addresses | None = None) -> None:
        self.ip = addresses or Addresses()
        tag = f"{NS_PREFIX}-{os.getpid()}-{next(_counter)}"
        self.ns = {role: f"{tag}-{role}" for role in ("client", "router", "wan", "server", "turn")}
        self._procs: list[subprocess.Popen] = []
        self._dir = Path(tempfile.mkdtemp(prefix="likeness-netlab-"))
        self._up = False
        self.coturn: Coturn | None = None

    @property
    def server_ip(self) -> str:
        return self.ip.server

    @property
    def folder(self) -> Path:
        """A private temporary folder of this lab (removed on close)."""
        return self._dir

    # -- building and tearing down -------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        """Create the namespaces, links, addresses, routes and NAT."""
        reason = unavailable()
        if reason:
            raise NetLabError(reason)
        sweep_stale()
        self._up = True
        for name in self.ns.values():
            _run(["ip", "netns", "add", name])
            self.sh(name, "ip link set lo up")
        n, ip = self.ns, self.ip
        self.sh(n["wan"], "ip link add br0 type bridge && ip link set br0 up")
        self._veth("client", "c0", "router", "r0")
        self._veth("router", "r1", "wan", "w-r")
        self._veth("server", "s0", "wan", "w-s")
        self._veth("turn", "t0", "wan", "w-t")
        for port in ("w-r", "w-s", "w-t"):
            self.sh(n["wan"], f"ip link set {port} master br0 && ip link set {port} up")
        self._addr("client", "c0", ip.client, 24)
        self._addr("router", "r0", ip.router_lan, 24)
        self._addr("router", "r1", ip.router_wan, 24)
        self._addr("server", "s0", ip.server, 24)
        self._addr("turn", "t0", ip.turn, 24)
        self.sh(n["client"], f"ip route add default via {ip.router_lan}")
        self.sh(n["router"], "sysctl -qw net.ipv4.ip_forward=1")
        self.sh(n["router"], "iptables -t nat -A POSTROUTING -o r1 -j MASQUERADE")
        self.sh(n["router"], "iptables -N LIKENESS_LOSS && iptables -I FORWARD -j LIKENESS_LOSS")

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        _run(
            ["ip", "-n", self.ns[a], "link", "add", a_if, "type", "veth", "peer", "name", b_if,
             "netns", self.ns[b]]
        )  # fmt: skip

    def _addr(self, role: str, ifname: str, address: str, prefix: int) -> None:
        self.sh(self.ns[role], f"ip addr add {address}/{prefix} dev {ifname}")
        self.sh(self.ns[role], f"ip link set {ifname} up")

    def close(self) -> None:
        """End every process started here, remove the namespaces and the folder. Idempotent."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._up:
            for name in self.ns.values():
                _kill_namespace(name)
            self._up = False
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- running things inside ----------------------------------------------------------

    def command(self, role: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the namespace of ``role``."""
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def sh(self, namespace: str, script: str) -> str:
        """Run a shell line in a namespace (by its full name); returns stdout."""
        return _run(["ip", "netns", "exec", namespace, "sh", "-c", script])

    def run(self, role: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run ``argv`` in ``role``'s namespace to the end; returns stdout.

        Raises:
            NetLabError: it exited non-zero (with its stderr).
        """
        return _run(self.command(role, argv), timeout=timeout)

    def popen(self, role: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start ``argv`` in ``role``'s namespace; it is ended when the lab closes."""
        proc = subprocess.Popen(self.command(role, argv), **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self, role: str) -> Iterator[None]:
        """Move the calling thread into ``role``'s namespace for the block.

        Sockets created in the block stay in that namespace after it; other threads
        (an executor's) are not moved: run an asyncio client's loop in this thread.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.ns[role]}") as ns:
            if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                raise NetLabError(f"setns into {role}: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                libc.setns(home.fileno(), CLONE_NEWNET)

    def call(self, role: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn()`` in a new thread inside ``role``'s namespace and return its result
        (its exception is raised here). An asyncio client: ``lab.call("client",
        lambda: asyncio.run(main()))``: the loop's sockets then live in that namespace.

        Raises:
            TimeoutError: ``fn`` did not return within ``timeout`` seconds (it goes on
                in its thread; the lab's close ends the processes, not the thread).
        """
        box: list[tuple[bool, Any]] = []

        def run() -> None:
            with self.entered(role):
                try:
                    box.append((True, fn()))
                except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                    box.append((False, err))

        thread = threading.Thread(target=run, name=f"netlab-{role}", daemon=True)
        thread.start()
        thread.join(timeout)
        if not box:
            raise TimeoutError(f"{role}: no result within {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # -- coturn and loss ----------------------------------------------------------------

    def start_coturn(self, secret: str, realm: str = "likeness.test") -> Coturn:
        """Start coturn in the turn namespace with ``use-auth-secret``; returns when it
        listens. It relays to the server's address only (allowed-peer-ip).

        Raises:
            NetLabError: ``turnserver`` missing, or it did not come up (its log attached).
        """
        binary = shutil.which("turnserver")
        if binary is None:
            raise NetLabError("coturn is not installed (Debian package coturn; `make setup`)")
        conf, log = self._dir / "turnserver.conf", self._dir / "turn.log"
        lines = [
            f"listening-ip={self.ip.turn}",
            f"relay-ip={self.ip.turn}",
            f"listening-port={TURN_PORT}",
            "min-port=49152",
            "max-port=49999",
            f"realm={realm}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "denied-peer-ip=0.0.0.0-255.255.255.255",
            f"allowed-peer-ip={self.ip.server}",
            f"userdb={self._dir / 'turndb'}",
            f"pidfile={self._dir / 'turnserver.pid'}",
            f"log-file={log}",
            "simple-log",
            "verbose",
        ]
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        proc = self.popen(
            "turn", [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.coturn = Coturn(proc, f"turn:{self.ip.turn}:{TURN_PORT}", log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if f"{self.ip.turn}:{TURN_PORT}" in self.sh(self.ns["turn"], "ss -lun"):
                return self.coturn
            time.sleep(0.1)
        raise NetLabError("coturn did not start:\n" + self.coturn.log_text()[-2000:])

    def set_loss(self, probability: float, direction: str = "both") -> None:
        """Drop each packet crossing the router with ``probability`` (0 = none):
        ``"both"`` ways, ``"up"`` (client to the public side) or ``"down"``."""
        if not 0 <= probability <= 1:
            raise ValueError("loss probability must be within [0, 1]")
        where = {"both": "", "up": "-i r0 ", "down": "-o r0 "}.get(direction)
        if where is None:
            raise ValueError("direction must be 'both', 'up' or 'down'")
        chain = "LIKENESS_LOSS"
        script = f"iptables -F {chain}"
        if probability > 0:
            script += (
                f" && iptables -A {chain} {where}-m statistic --mode random "
                f"--probability {probability:.4f} -j DROP"
            )
        self.sh(self.ns["router"], script)

    def dropped(self) -> int:
        """Packets the loss rule has dropped since it was last set."""
        out = self.sh(self.ns["router"], "iptables -nvxL LIKENESS_LOSS")
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())

    @contextlib.contextmanager
    def companion(
        self, data: Path, secret: str, env: dict[str, str] | None = None
    ) -> Iterator[tuple[str, int]]:
        """``likeness serve`` on the server's address, its TURN server the lab's coturn
        (credentials from ``secret``), pages relay-only; yields ``(url, pid)`` once
        ``/health`` answers from the client's side of the NAT. Logs to
        ``data/server.log``; stopped on exit.

        Raises:
            NetLabError: no coturn started, or the server did not become ready.
        """
        if self.coturn is None:
            raise NetLabError("start coturn first (start_coturn)")
        port = self.free_port("server")
        settings = {
            "LIKENESS_DATA_DIR": str(data),
            "LIKENESS_SERVER__ICE_SERVERS": json.dumps([{"urls": self.coturn.url}]),
            "LIKENESS_SERVER__TURN_SECRET": secret,
            "LIKENESS_SERVER__ICE_TRANSPORT_POLICY": "relay",
            **(env or {}),
        }
        full = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")} | settings
        argv = [sys.executable, "-m", "runtime", "serve", "--host", self.ip.server]
        with open(data / "server.log", "w") as log:
            proc = self.popen(
                "server", [*argv, "--port", str(port)], env=full, stdout=log, stderr=log
            )
        url = f"http://{self.ip.server}:{port}"

        def ready() -> bool:
            health = f"{url}/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as r:
                return r.status == 200
            return False

        deadline = time.monotonic() + 240
        while not self.call("client", ready, 5):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (data / "server.log").read_text(errors="replace")[-4000:]
                raise NetLabError(f"likeness serve did not become ready:\n{tail}")
            time.sleep(0.5)
        try:
            yield url, proc.pid
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)

    def free_port(self, role: str) -> int:
        """A TCP port free in ``role``'s namespace (every namespace starts empty)."""
        with self.entered(role), socket.socket() as sock:
            sock.bind(("", 0))
            return sock.getsockname()[1]
