"""Leader election through a lease row in the database: one dispatcher fills the window at a
time, and a standby takes over within a few seconds of the leader's death.

The holder renews its lease every `renew_every` seconds; a lease not renewed for `ttl`
seconds may be taken by anyone, and taking it bumps its token. Each fill also locks the
lease's row and checks that it still holds it with that token (`Leadership.fence`), so a
leader that was paused past its lease (and replaced) fills nothing when it wakes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from orchestrator.db import Database
from orchestrator.models import Lease

LEASES: sa.Table = Lease.__table__  # type: ignore[assignment]


class Leadership:
    def __init__(self, database: Database, name: str, holder: str, *, ttl: float = 3.0) -> None:
        self.database = database
        self.name = name
        self.holder = holder
        self.ttl = timedelta(seconds=ttl)
        self.token: int | None = None

    def hold(self, now: datetime) -> bool:
        """Renew the lease if held, or take it if free or expired; whether it is held now."""
        with self.database.transaction() as session:
            self.token = self._renew(session, now) or self._take(session, now)
        return self.token is not None

    def release(self) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait it out."""
        if self.token is None:
            return
        with self.database.transaction() as session:
            session.execute(
                sa.update(LEASES)
                .where(*self._mine())
                .values(expires_at=datetime.fromtimestamp(0).astimezone())
            )
        self.token = None

    def fence(self) -> sa.ScalarSelect[Any] | None:
        """For a fill's first statement: the lease's token if the lease is still ours with
        our token (null otherwise), locking its row on PostgreSQL (on SQLite the
        transaction holds the write lock already). None: we hold no token at all."""
        if self.token is None:
            return None
        query = sa.select(LEASES.c.token).where(*self._mine())
        if self.database.dialect == "postgresql":
            query = query.with_for_update()
        return query.scalar_subquery()

    def _renew(self, session: Session, now: datetime) -> int | None:
        if self.token is None:
            return None
        renewed = session.execute(
            sa.update(LEASES)
            .where(*self._mine(), LEASES.c.expires_at >= now)
            .values(expires_at=now + self.ttl)
        )
        return self.token if renewed.rowcount == 1 else None  # type: ignore[attr-defined]

    def _take(self, session: Session, now: datetime) -> int | None:
        insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
        session.execute(
            insert(LEASES)
            .values(name=self.name, holder=self.holder, token=0, expires_at=now - self.ttl)
            .on_conflict_do_nothing()
        )
        taken = session.execute(
            sa.update(LEASES)
            .where(LEASES.c.name == self.name, LEASES.c.expires_at < now)
            .values(holder=self.holder, token=LEASES.c.token + 1, expires_at=now + self.ttl)
            .returning(LEASES.c.token)
        ).first()
        return None if taken is None else int(taken[0])

    def _mine(self) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            LEASES.c.name == self.name,
            LEASES.c.holder == self.holder,
            LEASES.c.token == self.token,
        )


def current_holder(database: Database, name: str, now: datetime) -> str | None:
    """Who holds the lease now, or None when nobody does (never taken, released, expired)."""
    with database.session() as session:
        row = session.execute(
            sa.select(LEASES.c.holder).where(LEASES.c.name == name, LEASES.c.expires_at > now)
        ).first()
    return None if row is None else str(row.holder)
