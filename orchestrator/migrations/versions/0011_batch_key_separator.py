"""batch key separator

A keyed batch's jobs were recorded under `<key>#<index>`, which a single job's own key could
equal (`K#0`): a batch under `K` then answered with that single job. Batch items now use a
control character as the separator, which a single job's key may not hold. Existing batch
items are rewritten: a batch is one insert, so its jobs share their tenant and creation
time and are keyed `K#0` to `K#n-1`. A lone job keyed `K#0` may be a batch of one or a
single job with that key: it is keyed `K` + `\x1e0` (`service.LEGACY_ITEM`), which no new
job is given and which a repeat of either request finds, with the same body.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import re
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD, NEW = "#", "\x1f"
LONE_OLD, LONE_NEW = "#0", "\x1e0"
JOBS = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("idempotency_key", sa.String),
)


def _rewrite(old: str, new: str) -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(JOBS.c.id, JOBS.c.tenant_id, JOBS.c.created_at, JOBS.c.idempotency_key).where(
            JOBS.c.idempotency_key.contains(old, autoescape=True)
        )
    ).all()
    item = re.compile(rf"(?P<key>.*){re.escape(old)}(?P<index>0|[1-9][0-9]{{0,2}})", re.S)
    batches: defaultdict[tuple[str, object, str], dict[int, str]] = defaultdict(dict)
    for job_id, tenant_id, created_at, key in rows:
        if match := item.fullmatch(key):
            batches[(tenant_id, created_at, match["key"])][int(match["index"])] = job_id
    for (_, _, key), items in batches.items():
        if sorted(items) != list(range(len(items))):
            continue  # not one batch's items: single jobs whose keys look alike
        for index, job_id in items.items():
            # Alone, it may be a single job's own key: keyed apart for both lookups.
            lone = len(items) == 1 and old == OLD
            suffix = LONE_NEW if lone else f"{new}{index}"
            _set_key(connection, job_id, f"{key}{suffix}")


def _set_key(connection: sa.Connection, job_id: str, key: str) -> None:
    connection.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(idempotency_key=key))


def upgrade() -> None:
    _rewrite(OLD, NEW)


def downgrade() -> None:
    _rewrite(NEW, OLD)
    connection = op.get_bind()
    lone = connection.execute(
        sa.select(JOBS.c.id, JOBS.c.idempotency_key).where(
            JOBS.c.idempotency_key.endswith(LONE_NEW, autoescape=True)
        )
    ).all()
    for job_id, key in lone:
        _set_key(connection, job_id, key[: -len(LONE_NEW)] + LONE_OLD)
