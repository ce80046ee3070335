"""dispatch window

Closed-loop dispatch. A job no longer carries an outbox timer (`dispatch_due_at`,
`dispatched_at`) or a park count: it carries `ready_since`, set when it becomes claimable
and due, and the dispatcher admits ready jobs into a bounded window of the broker, fairly
across tenants. `dispatch_window` holds what was admitted and not yet claimed (its id
numbers each delivery); `leases` elects the one dispatcher that fills it. Priorities run
from 1 to 10 (5 by default; jobs recorded with the old 0 become 5).

Jobs that were in the broker when this revision ran are ready again and get admitted
once more; a claim skips the copy that arrives second.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As `orchestrator.models` had them when this revision was written.
CLAIMABLE = "status IN ('queued', 'retrying')"
READY = f"ready_since IS NOT NULL AND {CLAIMABLE}"
SCHEDULED = f"ready_since IS NULL AND {CLAIMABLE}"
PARKED = f"dispatch_due_at IS NULL AND {CLAIMABLE}"
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ready_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("trace_context", sa.String(length=64), nullable=True))
    op.execute(
        f"UPDATE jobs SET ready_since = COALESCE(run_at, updated_at) WHERE {CLAIMABLE} "  # noqa: S608 - constants
        "AND (run_at IS NULL OR run_at <= CURRENT_TIMESTAMP)"
    )
    op.execute("UPDATE jobs SET priority = 5 WHERE priority = 0")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("priority", server_default="5")
        batch_op.drop_index("ix_jobs_dispatch_due_at")
        batch_op.drop_index("ix_jobs_parked")
        batch_op.drop_column("dispatch_due_at")
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("parks")
        batch_op.create_index(
            "ix_jobs_ready",
            ["queue", "tenant_id", sa.desc(sa.column("priority")), "ready_since", "id"],
            unique=False,
            postgresql_where=sa.text(READY),
            sqlite_where=sa.text(READY),
        )
        batch_op.create_index(
            "ix_jobs_scheduled",
            ["run_at"],
            unique=False,
            postgresql_where=sa.text(SCHEDULED),
            sqlite_where=sa.text(SCHEDULED),
        )
    op.create_table(
        "dispatch_window",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_dispatch_window_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch_window"),
        sa.UniqueConstraint("job_id", "attempt", name="uq_dispatch_window_job_id_attempt"),
        sqlite_autoincrement=True,  # a deleted row's id is never handed out again
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("dispatch_window")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_scheduled")
        batch_op.drop_index("ix_jobs_ready")
        batch_op.add_column(sa.Column("parks", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dispatch_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("priority", server_default=None)
    # Every claimable job comes due for the old outbox sweeper at once.
    op.execute(f"UPDATE jobs SET dispatch_due_at = CURRENT_TIMESTAMP WHERE {CLAIMABLE}")  # noqa: S608
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_dispatch_due_at",
            ["dispatch_due_at"],
            unique=False,
            postgresql_where=sa.text("dispatch_due_at IS NOT NULL"),
            sqlite_where=sa.text("dispatch_due_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_jobs_parked",
            ["tenant_id", "id"],
            unique=False,
            postgresql_where=sa.text(PARKED),
            sqlite_where=sa.text(PARKED),
        )
        batch_op.drop_column("trace_context")
        batch_op.drop_column("ready_since")
