"""index parked jobs

Under a per-tenant running limit every finished run releases the tenant's oldest parked
job; without an index of its own that lookup walked the tenant's whole history (and the
reaper's re-offer every queued job). This one holds parked jobs only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As `orchestrator.models.PARKED_SQL` was when this revision was written.
PARKED = "dispatch_due_at IS NULL AND status IN ('queued', 'retrying')"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_parked",
            ["tenant_id", "id"],
            unique=False,
            postgresql_where=sa.text(PARKED),
            sqlite_where=sa.text(PARKED),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_parked")
