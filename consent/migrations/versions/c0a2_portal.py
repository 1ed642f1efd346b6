"""Portal: users, passwords, passkeys, sessions, WebAuthn challenges, guardians, deployments.

Revision ID: c0a2_portal
Revises: c0a1
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from consent.models import UTCDateTime

revision = "c0a2_portal"
down_revision = "c0a1"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str, **kw) -> sa.ForeignKeyConstraint:
    ref_table = target.split(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=f"fk_{table}_{column}_{ref_table}", **kw
    )


def upgrade() -> None:
    op.create_table(
        "portal_users",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=True),
        sa.Column("handle", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _fk("portal_users", "subject_id", "subjects.id"),
        sa.PrimaryKeyConstraint("id", name="pk_portal_users"),
        sa.UniqueConstraint("email", name="uq_portal_users_email"),
    )
    op.create_index("ix_portal_users_subject_id", "portal_users", ["subject_id"])
    op.create_table(
        "portal_passwords",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _fk("portal_passwords", "user_id", "portal_users.id"),
        sa.PrimaryKeyConstraint("user_id", name="pk_portal_passwords"),
    )
    op.create_table(
        "portal_credentials",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("credential_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        _fk("portal_credentials", "user_id", "portal_users.id"),
        sa.PrimaryKeyConstraint("id", name="pk_portal_credentials"),
        sa.UniqueConstraint("credential_id", name="uq_portal_credentials_credential_id"),
    )
    op.create_index("ix_portal_credentials_user_id", "portal_credentials", ["user_id"])
    op.create_table(
        "portal_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        _fk("portal_sessions", "user_id", "portal_users.id"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_portal_sessions"),
    )
    op.create_index("ix_portal_sessions_user_id", "portal_sessions", ["user_id"])
    op.create_table(
        "portal_webauthn_challenges",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("challenge", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        _fk("portal_webauthn_challenges", "user_id", "portal_users.id"),
        sa.PrimaryKeyConstraint("id", name="pk_portal_webauthn_challenges"),
    )
    op.create_table(
        "portal_guardian_links",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("guardian_id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("basis", sa.Text(), nullable=False),
        sa.Column("linked_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("ended_by", sa.String(64), nullable=True),
        _fk("portal_guardian_links", "guardian_id", "portal_users.id"),
        _fk("portal_guardian_links", "subject_id", "subjects.id"),
        sa.PrimaryKeyConstraint("id", name="pk_portal_guardian_links"),
    )
    op.create_index(
        "ix_portal_guardian_links_guardian_id", "portal_guardian_links", ["guardian_id"]
    )
    op.create_index("ix_portal_guardian_links_subject_id", "portal_guardian_links", ["subject_id"])
    op.create_table(
        "portal_deployments",
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_portal_deployments"),
    )
    op.create_table(
        "portal_deployment_avatars",
        sa.Column("deployment", sa.String(80), nullable=False),
        sa.Column("avatar_id", sa.String(64), nullable=False),
        _fk(
            "portal_deployment_avatars", "deployment", "portal_deployments.name", ondelete="CASCADE"
        ),
        _fk("portal_deployment_avatars", "avatar_id", "avatars.id"),
        sa.PrimaryKeyConstraint("deployment", "avatar_id", name="pk_portal_deployment_avatars"),
    )


def downgrade() -> None:
    for index, table in (
        ("ix_portal_guardian_links_subject_id", "portal_guardian_links"),
        ("ix_portal_guardian_links_guardian_id", "portal_guardian_links"),
        ("ix_portal_sessions_user_id", "portal_sessions"),
        ("ix_portal_credentials_user_id", "portal_credentials"),
        ("ix_portal_users_subject_id", "portal_users"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "portal_deployment_avatars",
        "portal_deployments",
        "portal_guardian_links",
        "portal_webauthn_challenges",
        "portal_sessions",
        "portal_credentials",
        "portal_passwords",
        "portal_users",
    ):
        op.drop_table(table)
