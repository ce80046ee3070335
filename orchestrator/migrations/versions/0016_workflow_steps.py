"""workflow steps

A workflow (`define_workflow`) runs as a line of gates, each spawning one stage of its
steps as children. `step` names the workflow step a row runs ("#0", "#1"... for the
gates), so results are found by step name and a map's held children are released in
their own step.

`ix_jobs_held`: a workflow map's jobs held back by its concurrency, by join and item. Each
job of a map that ends looks for the next one held: without it, that lookup read every
sibling, a map's whole size, for every job of the map.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


HELD = "status = 'waiting' AND join_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_jobs_held",
            ["join_id", "item_index"],
            unique=False,
            postgresql_where=sa.text(HELD),
            sqlite_where=sa.text(HELD),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_held")
        batch_op.drop_column("step")
