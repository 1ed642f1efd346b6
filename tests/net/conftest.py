"""The network lab for tests: namespaces, NAT, coturn (runtime.netlab).

Tests here need root (CI runs as root and must run them); elsewhere they skip with the
reason. Root without ``ip``/``iptables``/coturn is an error, not a skip: ``make setup``
installs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from runtime.netlab import NetLab

TURN_SECRET = "lab-secret-" + os.urandom(6).hex()


def _lab() -> Iterator[NetLab]:
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces, iptables); CI runs as root")
    with NetLab() as lab:
        lab.start_coturn(TURN_SECRET)
        yield lab


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """A fresh lab with coturn (use-auth-secret = TURN_SECRET); removed afterwards."""
    yield from _lab()


@pytest.fixture(scope="module")
def module_lab() -> Iterator[NetLab]:
    """One lab with coturn for a whole module (the live-server tests share it)."""
    yield from _lab()
