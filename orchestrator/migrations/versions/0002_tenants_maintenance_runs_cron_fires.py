"""tenants, maintenance runs, cron fire ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.models import JSONType, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cron_fires",
        sa.Column("cron_id", sa.String(length=64), nullable=False),
        sa.Column("occurrence", UTCDateTime(timezone=True), nullable=False),
        sa.Column("fired_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("jobs_created", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cron_id", "occurrence", name=op.f("pk_cron_fires")),
    )
    op.create_table(
        "maintenance_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("per_tenant", JSONType, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_runs")),
    )
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_maintenance_runs_kind_started_at", ["kind", "started_at"], unique=False
        )

    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    # Every tenant that already has jobs, at the default tier.
    op.execute(
        "INSERT INTO tenants (id, tier, created_at) "
        "SELECT tenant_id, NULL, MIN(created_at) FROM jobs GROUP BY tenant_id"
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_finished_at_unarchived",
            ["finished_at", "id"],
            unique=False,
            postgresql_where=sa.text("archived_at IS NULL"),
            sqlite_where=sa.text("archived_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_finished_at_unarchived",
            postgresql_where=sa.text("archived_at IS NULL"),
            sqlite_where=sa.text("archived_at IS NULL"),
        )

    op.drop_table("tenants")
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_maintenance_runs_kind_started_at")

    op.drop_table("maintenance_runs")
    op.drop_table("cron_fires")
