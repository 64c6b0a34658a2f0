"""score_logs.queue_id: the MTA's queue id (XFORWARD IDENT), indexed

An operator holding a queue id from the MTA's log looks up spamd's verdict with
`spamd logs --queue-id`. Rows written before this revision have "".

Building the index reads the whole table, and inserts into it wait meanwhile (a running
daemon's writer keeps its rows, in memory or in its spool, so none is lost): on a large score log,
upgrade when mail is quiet, or purge old rows first (`spamd logs purge --older-than`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("score_logs") as batch:
        batch.add_column(sa.Column("queue_id", sa.String(length=64), server_default="", nullable=False))
        batch.create_index(batch.f("ix_score_logs_queue_id"), ["queue_id"])


def downgrade() -> None:
    with op.batch_alter_table("score_logs") as batch:
        batch.drop_index(batch.f("ix_score_logs_queue_id"))
        batch.drop_column("queue_id")
