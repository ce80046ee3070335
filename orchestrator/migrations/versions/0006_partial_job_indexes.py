"""partial job indexes

The sweeper's, reaper's, gauges' and archival's indexes hold only the rows their scans
can want, so claims and successes write fewer index entries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status IN ('queued', 'running', 'retrying', 'waiting')"
PARTIAL: dict[str, tuple[list[str], str | None]] = {
    "ix_jobs_dispatch_due_at": (["dispatch_due_at"], "dispatch_due_at IS NOT NULL"),
    "ix_jobs_lease_expires_at": (["lease_expires_at"], "lease_expires_at IS NOT NULL"),
    "ix_jobs_status_updated_at": (["status", "updated_at"], LIVE),
    "ix_jobs_finished_at_unarchived": (
        ["finished_at", "id"],
        "archived_at IS NULL AND finished_at IS NOT NULL",
    ),
}
BEFORE: dict[str, tuple[list[str], str | None]] = {
    "ix_jobs_dispatch_due_at": (["dispatch_due_at"], None),
    "ix_jobs_lease_expires_at": (["lease_expires_at"], None),
    "ix_jobs_status_updated_at": (["status", "updated_at"], None),
    "ix_jobs_finished_at_unarchived": (["finished_at", "id"], "archived_at IS NULL"),
}


def _recreate(indexes: dict[str, tuple[list[str], str | None]]) -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, (columns, where) in indexes.items():
            batch_op.drop_index(name)
            predicate = (
                {}
                if where is None
                else {
                    "postgresql_where": sa.text(where),
                    "sqlite_where": sa.text(where),
                }
            )
            batch_op.create_index(name, columns, unique=False, **predicate)


def upgrade() -> None:
    _recreate(PARTIAL)


def downgrade() -> None:
    _recreate(BEFORE)
