"""pruned model versions: model_versions.pruned_at

A pruned version's files are gone from the database and from the hosts' models/, but its
row stays (status "pruned"), so that training runs and score logs naming it still say
what it was.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # An older spamd knows no "pruned" status: such rows go back to what they were before
    # ("retired" once active, else "candidate"); their files stay gone.
    op.execute("UPDATE model_versions SET status = CASE WHEN activated_at IS NULL THEN 'candidate' "
               "ELSE 'retired' END WHERE status = 'pruned'")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("pruned_at")
