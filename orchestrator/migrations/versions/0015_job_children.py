"""job children

A handler may spawn child jobs (`JobContext.spawn`), recorded with its success. The step
after it in its pipeline then waits for them: it is their join, and runs once, after the
last of them succeeded.

- `join_id`: on a child, the join it counts toward (none when its parent has no next step).
- `item_index`: on a child, its place among its siblings (results are read in that order).
- `waiting_on`: on a join, how many of its children have not finished yet.
- `children_failed`, `failures_allowed`: on a join, how many of its children failed for
  good, and how many may (its type's `allow_failures`; -1: any number).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "join_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("join_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("item_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("waiting_on", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("children_failed", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("failures_allowed", sa.Integer(), nullable=True))
        batch_op.create_index(
            "ix_jobs_join_id",
            ["join_id", "item_index"],
            unique=False,
            postgresql_where=sa.text(WHERE),
            sqlite_where=sa.text(WHERE),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_join_id")
        batch_op.drop_column("failures_allowed")
        batch_op.drop_column("children_failed")
        batch_op.drop_column("waiting_on")
        batch_op.drop_column("item_index")
        batch_op.drop_column("join_id")
