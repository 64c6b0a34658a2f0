"""initial schema: labelled messages, score logs, model versions, training runs

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "labelled_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=8), nullable=False),
        sa.Column("labelled_by", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("message_id", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("score_log_id", sa.String(length=20), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelled_messages")),
        sa.UniqueConstraint("sha256", name=op.f("uq_labelled_messages_sha256")),
    )
    op.create_index(op.f("ix_labelled_messages_updated_at"), "labelled_messages", ["updated_at"])

    op.create_table(
        "score_logs",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("time", UTC, nullable=False),
        sa.Column("message_id", sa.String(length=512), nullable=False),
        sa.Column("sender", sa.String(length=512), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("client_addr", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("cnn_score", sa.Float(), nullable=True),
        sa.Column("rnn_score", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("long_context", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_logs")),
    )
    op.create_index(op.f("ix_score_logs_time"), "score_logs", ["time"])
    op.create_index(op.f("ix_score_logs_message_id"), "score_logs", ["message_id"])
    op.create_index("ix_score_logs_verdict_time", "score_logs", ["verdict", "time"])
    op.create_index("ix_score_logs_action_time", "score_logs", ["action", "time"])
    op.create_index("ix_score_logs_sender_time", "score_logs", ["sender", "time"])
    op.create_index("ix_score_logs_model_version_time", "score_logs", ["model_version", "time"])
    op.create_index("ix_score_logs_long_context_time", "score_logs", ["long_context", "time"])

    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("trained_on_labels", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("activated_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    op.create_index(op.f("ix_model_versions_status"), "model_versions", ["status"])

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("candidate_version", sa.String(length=128), nullable=True),
        sa.Column("active_version", sa.String(length=128), nullable=True),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(op.f("ix_training_runs_started_at"), "training_runs", ["started_at"])


def downgrade() -> None:
    # Dropping a table drops its indexes too, on both SQLite and PostgreSQL.
    op.drop_table("training_runs")
    op.drop_table("model_versions")
    op.drop_table("score_logs")
    op.drop_table("labelled_messages")
