"""Consent fixtures: keys, and a store on SQLite and on a throwaway PostgreSQL cluster.

The PostgreSQL cluster is Debian's (``apt-get install postgresql``): ``initdb`` into a
temp dir (as the ``postgres`` user when the tests run as root, since initdb refuses
root), ``pg_ctl start`` on a free 127.0.0.1 port with its socket in the temp dir and
``trust`` auth, one fresh database per test, ``pg_ctl stop -m immediate`` at the end.
It is skipped only when the binaries are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from consent.keys import SigningKeys, SubjectKeys
from consent.store import ConsentStore, photo_hash, utcnow


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """A running throwaway cluster; :meth:`new_database` gives a fresh database URL."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._count = 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        self._count += 1
        name = f"consent_test_{self._count}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "Debian's PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb missing): "
            "apt-get install -y postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="consent-pg-"))
    data, log = root / "data", root / "server.log"
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    port = _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stderr}{proc.stdout}\n{server_log}")

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
        "-E",
        "UTF8",
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield PgCluster(port)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def signing_keys(tmp_path: Path) -> SigningKeys:
    return SigningKeys.load(tmp_path / "signing")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[ConsentStore]:
    """A migrated store on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'consent.db'}"
    else:
        url = request.getfixturevalue("pg_cluster").new_database()
    st = ConsentStore(url, SubjectKeys.load(tmp_path / "keys"), files_dir=tmp_path / "files")
    st.migrate()
    yield st
    st.close()


class World:
    """A subject with one avatar and a passed liveness record, ready for a grant."""

    def __init__(self, store: ConsentStore, keys: SigningKeys, name: str = "Ann Example") -> None:
        self.store, self.keys = store, keys
        self.subject = store.add_subject(name).id
        self.avatar = store.add_avatar(self.subject, photo_hash(name.encode()), [0.25, -1.5, 3.0])

    def liveness(self, avatar: str | None = None, *, passed: bool = True, nonce: str = "") -> str:
        rec = self.store.record_liveness(
            self.subject,
            avatar or self.avatar,
            points={"digits": True, "head_turns": passed, "identity": True},
            scores={"identity_distance": 0.31, "yaw_range": 41.0},
            nonce=nonce or os.urandom(8).hex(),
        )
        return rec.id

    def grant(self, **overrides):
        args = {
            "subject_id": self.subject,
            "avatar_id": self.avatar,
            "deployments": ["kiosk"],
            "purposes": ["eldercare"],
            "expires_at": utcnow() + timedelta(days=30),
            "allow_voice": True,
        }
        args.update(overrides)
        if "liveness_id" not in args and not str(args.get("granted_by", "")).startswith("guard"):
            args["liveness_id"] = self.liveness(args["avatar_id"])
        return self.store.issue(self.keys, **args)


@pytest.fixture
def world(store: ConsentStore, signing_keys: SigningKeys) -> World:
    return World(store, signing_keys)


# ---- enrolment and the live ceremony ---------------------------------------------------


@pytest.fixture(scope="session")
def analyzer():
    """The face models as enrolment loads them (one face only), once per run."""
    from avatar.face import FaceAnalyzer, FaceOptions

    return FaceAnalyzer.load(FaceOptions(multiple="refuse"))


@pytest.fixture(scope="session")
def asr():
    """Whisper set up for reading digits, once per run."""
    from consent.liveness.verify import load_asr

    return load_asr()


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[ConsentStore]:
    """A migrated SQLite store with a files folder (kept clips, subject folders)."""
    st = ConsentStore(
        f"sqlite:///{tmp_path / 'consent.db'}",
        SubjectKeys.load(tmp_path / "keys"),
        files_dir=tmp_path / "files",
    )
    st.migrate()
    yield st
    st.close()
