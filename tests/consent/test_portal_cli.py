"""``likeness consent user|guardian ...`` as real processes, then the accounts in the portal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from consent.store import ConsentStore
from tests.consent.test_portal_support import Person, portal_app, settings_for


def likeness(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "consent", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_accounts_from_the_command_line():
    secret = "operator password 1"
    made = likeness(
        "user",
        "add",
        "Op@Example.org",
        "--role",
        "operator",
        "--password-stdin",
        stdin=secret + "\n",
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["role"] == "operator"
    assert secret not in made.stdout + made.stderr

    ann = likeness(
        "user",
        "add",
        "ann@example.org",
        "--name",
        "Ann",
        "--password-stdin",
        stdin="ann's password\n",
    )
    carol = likeness("user", "add", "carol@example.org")
    assert ann.returncode == 0 and carol.returncode == 0, ann.stderr + carol.stderr
    assert "has no password" in carol.stderr
    subject = json.loads(ann.stdout)["subject_id"]

    bad = likeness("user", "add", "x@example.org", "--role", "boss")
    assert bad.returncode == 2 and "--role must be one of" in bad.stderr
    dup = likeness("user", "add", "ANN@example.org")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    nobasis = likeness(
        "guardian", "link", "carol@example.org", "--subject", subject, "--basis", " "
    )
    assert nobasis.returncode == 2

    linked = likeness(
        "guardian",
        "link",
        "carol@example.org",
        "--subject",
        subject,
        "--basis",
        "lasting power of attorney #123",
    )
    assert linked.returncode == 0, linked.stderr
    assert json.loads(linked.stdout)["basis"] == "lasting power of attorney #123"

    listed = likeness("user", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["email"], r["role"]) for r in rows] == [
        ("op@example.org", "operator"),
        ("ann@example.org", "subject"),
        ("carol@example.org", "subject"),
    ]
    assert all("hash" not in json.dumps(r) for r in rows)

    settings = settings_for()
    store = ConsentStore.open(settings.data_dir)
    try:
        app = portal_app(store, settings)
        operator = Person(app).signin("op@example.org", secret)
        assert operator.user["roles"] == ["operator"]
        links = operator.get("/guardians").json()["links"]
        assert [(x["guardian_email"], x["subject_id"]) for x in links] == [
            ("carol@example.org", subject)
        ]
        assert Person(app).signin("ann@example.org", "ann's password").user["subject_id"] == subject
    finally:
        store.close()

    reset = likeness(
        "user", "password", "carol@example.org", "--password-stdin", stdin="carol's new password\n"
    )
    assert reset.returncode == 0, reset.stderr
