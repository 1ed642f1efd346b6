"""Start and stop a real ``likeness serve`` process for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``likeness serve`` on ``port`` with its own data dir; ``start()``/``stop()`` it."""

    def __init__(
        self, data: Path, port: int | None = None, args: tuple[str, ...] = (), **env: str
    ) -> None:
        self.data = data
        self.port = port or free_port()
        self.args = args
        scheme = "https" if "--tls-cert" in args else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")},
            "LIKENESS_DATA_DIR": str(data),
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.log = data / "server.log"

    def start(self, ready_within_s: float = 240) -> Server:
        """Start the process and wait for ``/health`` (start-up warms every model first:
        30-90 s on the 2-core machine under load, more at times)."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime", "serve", "--port", str(self.port), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become ready:\n" + self.log.read_text()[-4000:])

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
