"""job attempt budget

A job records how many attempts its type gave it, so a retry by hand grants the same
budget again from the row alone, even in a process that does not define the job's type
(a command line without its module). Jobs never retried have it in `max_attempts`; those
retried before this revision do not say, and need their type to be retried again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt_budget", sa.SmallInteger(), nullable=True))
    op.execute("UPDATE jobs SET attempt_budget = max_attempts WHERE requeues = 0")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("attempt_budget")
