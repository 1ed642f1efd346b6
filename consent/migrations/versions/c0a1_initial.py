"""Initial consent schema: subjects, avatars, liveness, grants, revocations, audit, state.

Revision ID: c0a1
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from consent.models import UTCDateTime

revision = "c0a1"
down_revision = None
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    state = op.create_table(
        "consent_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.Column("audit_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_state"),
    )
    op.bulk_insert(state, [{"id": 1, "epoch": 0, "audit_seq": 0, "audit_hash": GENESIS}])
    op.create_table(
        "subjects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subjects"),
    )
    op.create_table(
        "avatars",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_avatars_subject_id_subjects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_avatars"),
    )
    op.create_index("ix_avatars_subject_id", "avatars", ["subject_id"])
    op.create_table(
        "liveness_records",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("avatar_id", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("points", sa.Text(), nullable=False),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["avatar_id"], ["avatars.id"], name="fk_liveness_records_avatar_id_avatars"
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_liveness_records_subject_id_subjects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_liveness_records"),
        sa.UniqueConstraint("nonce", name="uq_liveness_records_nonce"),
    )
    op.create_index("ix_liveness_records_subject_id", "liveness_records", ["subject_id"])
    op.create_table(
        "grants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("avatar_id", sa.String(64), nullable=False),
        sa.Column("allow_face", sa.Boolean(), nullable=False),
        sa.Column("allow_voice", sa.Boolean(), nullable=False),
        sa.Column("deployments", sa.Text(), nullable=False),
        sa.Column("purposes", sa.Text(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("granted_by", sa.Text(), nullable=False),
        sa.Column("basis", sa.Text(), nullable=True),
        sa.Column("liveness_id", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], name="fk_grants_avatar_id_avatars"),
        sa.ForeignKeyConstraint(
            ["liveness_id"], ["liveness_records.id"], name="fk_grants_liveness_id_liveness_records"
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_grants_subject_id_subjects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
    )
    op.create_index("ix_grants_subject_id", "grants", ["subject_id"])
    op.create_index("ix_grants_avatar_id", "grants", ["avatar_id"])
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("revoked_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["grant_id"], ["grants.id"], name="fk_revocations_grant_id_grants"),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_revocations_subject_id_subjects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
        sa.UniqueConstraint("grant_id", name="uq_revocations_grant_id"),
    )
    op.create_index("ix_revocations_subject_id", "revocations", ["subject_id"])
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit"),
    )
    op.create_index("ix_audit_subject_id", "audit", ["subject_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_audit_subject_id", "audit"),
        ("ix_revocations_subject_id", "revocations"),
        ("ix_grants_avatar_id", "grants"),
        ("ix_grants_subject_id", "grants"),
        ("ix_liveness_records_subject_id", "liveness_records"),
        ("ix_avatars_subject_id", "avatars"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "audit",
        "revocations",
        "grants",
        "liveness_records",
        "avatars",
        "subjects",
        "consent_state",
    ):
        op.drop_table(table)
