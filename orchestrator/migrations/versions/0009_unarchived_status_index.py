"""unarchived jobs only in the tenant and status index

Dead-letter listings and the counts per status read `ix_jobs_tenant_id_status_id`, which
also held every archived job: those reads grew with a tenant's history.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_jobs_tenant_id_status_id"
COLUMNS = ["tenant_id", "status", "id"]
UNARCHIVED = "archived_at IS NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Build the new index beside the old one, then swap: dropping first would leave
        # listings without an index, and hold the table's exclusive lock (reads blocked)
        # for the whole build instead of the moment of the swap.
        op.create_index(f"{NAME}_new", "jobs", COLUMNS, postgresql_where=sa.text(UNARCHIVED))
        op.drop_index(NAME, table_name="jobs")
        op.execute(f"ALTER INDEX {NAME}_new RENAME TO {NAME}")
        return
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(NAME)
        batch_op.create_index(NAME, COLUMNS, unique=False, sqlite_where=sa.text(UNARCHIVED))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(NAME)
        batch_op.create_index(NAME, COLUMNS, unique=False)
