"""Alembic migrations of the consent store (``env.py`` + ``versions/``).

Run them with ``ConsentStore.migrate()``, which calls :func:`upgrade`. The version
table is ``consent_alembic_version`` so the consent schema can share a database with
other packages' migrations.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

VERSION_TABLE = "consent_alembic_version"
HERE = Path(__file__).resolve().parent


def config():
    """An Alembic ``Config`` for these migrations (no ini file needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(HERE / "versions"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``."""
    from alembic import command

    cfg = config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database behind ``engine`` to ``revision`` (``"base"``: drop all)."""
    from alembic import command

    cfg = config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
