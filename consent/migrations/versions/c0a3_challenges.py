"""Liveness challenges: issued nonces (sha256 only), bound to a subject and photo, single use.

Revision ID: c0a3_challenges
Revises: c0a2_portal
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from consent.models import UTCDateTime

revision = "c0a3_challenges"
down_revision = "c0a2_portal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "liveness_challenges",
        sa.Column("nonce_hash", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("avatar_id", sa.String(64), nullable=False),
        sa.Column("digits", sa.String(16), nullable=False),
        sa.Column("turns", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("nonce_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("liveness_id", sa.String(64), nullable=True),
        sa.Column("reasons", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_liveness_challenges_subject_id_subjects"
        ),
        sa.ForeignKeyConstraint(
            ["avatar_id"], ["avatars.id"], name="fk_liveness_challenges_avatar_id_avatars"
        ),
        sa.PrimaryKeyConstraint("nonce_hash", name="pk_liveness_challenges"),
    )
    op.create_index(
        "ix_liveness_challenges_subject_issued",
        "liveness_challenges",
        ["subject_id", "issued_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_liveness_challenges_subject_issued", table_name="liveness_challenges")
    op.drop_table("liveness_challenges")
