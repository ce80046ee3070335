"""API keys: `Authorization: Bearer ork_<id>_<secret>` maps a caller to a tenant.

Keys are shown once, at creation; the database keeps a SHA-256 digest, compared in
constant time. Revoked keys stop working at once (every request checks the database).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.errors import OrchestratorError
from orchestrator.ids import require_tenant_id
from orchestrator.models import ApiKey, utcnow

PREFIX = "ork_"
KEY_PATTERN = re.compile(r"^ork_([0-9a-f]{12})_[A-Za-z0-9_\-]{43}$")


@dataclass(frozen=True)
class IssuedKey:
    id: str
    tenant_id: str
    name: str
    key: str  # the only time the plaintext exists


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    database: Database, tenant_id: str, name: str, *, system_tenant: str | None = None
) -> IssuedKey:
    """A new key for `tenant_id`; never for `system_tenant`, the system's own, whose jobs
    hold every tenant's archival counts."""
    require_tenant_id(tenant_id)
    if tenant_id == system_tenant:
        raise OrchestratorError(f"tenant {tenant_id!r} is the system's own: no key acts as it")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with database.transaction() as session:
        session.add(
            ApiKey(
                id=key_id, tenant_id=tenant_id, name=name, digest=_digest(key), created_at=utcnow()
            )
        )
    return IssuedKey(key_id, tenant_id, name, key)


def authenticate(database: Database, presented: str) -> ApiKey | None:
    """The active key `presented` is, or None; never says which part was wrong."""
    match = KEY_PATTERN.match(presented)
    if match is None:
        return None
    with database.session() as session:
        key = session.get(ApiKey, match.group(1))
    if key is None or key.revoked_at is not None:
        return None
    return key if hmac.compare_digest(key.digest, _digest(presented)) else None


def list_keys(database: Database, tenant_id: str) -> list[ApiKey]:
    with database.session() as session:
        return list(
            session.scalars(
                sa.select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
            )
        )


def revoke_key(database: Database, key_id: str) -> ApiKey:
    with database.transaction() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise OrchestratorError(f"no API key {key_id!r}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        return key


def active_for(database: Database, key_id: str, tenant_id: str) -> bool:
    """Whether `key_id` names an unrevoked key of `tenant_id` (a session's key and tenant
    must agree: a session naming another tenant's key opens nothing)."""
    with database.session() as session:
        key = session.get(ApiKey, key_id)
    return key is not None and key.revoked_at is None and key.tenant_id == tenant_id
