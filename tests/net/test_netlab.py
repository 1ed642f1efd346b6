"""The network lab itself: NAT one way, loss, and no namespace or process left behind."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from runtime import netlab
from runtime.netlab import NetLab, NetLabError

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the network lab needs root (namespaces, iptables); CI runs as root"
)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _connects(lab: NetLab, role: str, host: str, port: int) -> bool:
    def attempt() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((host, port))
            except OSError:
                return False
            return True

    return lab.call(role, attempt, 10)


def _listen(lab: NetLab, role: str) -> tuple[socket.socket, int]:
    def make() -> tuple[socket.socket, int]:
        sock = socket.socket()
        sock.bind(("", 0))
        sock.listen()
        return sock, sock.getsockname()[1]

    return lab.call(role, make, 10)


def test_unavailable_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in netlab.unavailable()


def test_nat_one_way_and_loss(lab):
    server, port = _listen(lab, "server")
    client, client_port = _listen(lab, "client")
    with server, client:
        # The client reaches the public side through the NAT; nothing reaches the client.
        assert _connects(lab, "client", lab.ip.server, port)
        assert not _connects(lab, "server", lab.ip.client, client_port)
        lab.set_loss(1.0)
        assert not _connects(lab, "client", lab.ip.server, port)
        assert lab.dropped() > 0
        lab.set_loss(0.0)
        assert _connects(lab, "client", lab.ip.server, port)
        with pytest.raises(ValueError):
            lab.set_loss(1.5)


@needs_root
def test_nothing_is_left_behind_when_the_body_fails():
    with pytest.raises(RuntimeError, match="a failing test"), NetLab() as lab:
        turn = lab.start_coturn("s")
        names = set(lab.ns.values())
        assert names <= _namespaces()
        raise RuntimeError("a failing test")
    assert turn.proc.poll() is not None, "coturn still runs"
    assert not names & _namespaces()
    assert not lab.folder.exists()  # the coturn config with the secret is gone too


@needs_root
def test_a_lab_of_a_dead_process_is_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netlab.NS_PREFIX}-{dead.pid}-0-client"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netlab.sweep_stale()
        assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_a_failed_command_says_which(lab):
    with pytest.raises(NetLabError, match="`ip netns exec .* false` failed"):
        lab.run("client", ["false"])
