"""Who is calling: the one place that decides a request's tenant.

Two modes (`ORCH_AUTH_MODE`):
- `api-key`: `Authorization: Bearer ork_...` names the tenant (the default outside
  development). The dashboard takes the same key once, at login, into a signed session.
- `trusted-headers`: a gateway in front of us sets `X-Tenant-ID` (and `X-User-ID`); with
  `ORCH_GATEWAY_SECRET` set, a request must also carry it in `X-Gateway-Secret`.

In development with trusted headers and no gateway (`make run`), anyone may name any
tenant in a header; a browser sends none, so the dashboard lets a person pick the tenant
instead, kept in the signed session (`may_pick_tenant`). That grants nothing a header
would not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, request, session

from api.errors import Problem
from orchestrator import apikeys
from orchestrator.ids import tenant_id_problem
from orchestrator.runtime import Runtime
from orchestrator.settings import AuthMode, ConfigurationError, Settings

TENANT_HEADER = "X-Tenant-ID"
USER_HEADER = "X-User-ID"
GATEWAY_HEADER = "X-Gateway-Secret"
SESSION_TENANT = "tenant_id"
SESSION_KEY = "api_key_id"
SESSION_PICKED = "picked_tenant"
SESSION_SIGNING_FILE = "session.key"


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    user_id: str | None


def _runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


def auth_mode() -> AuthMode:
    return _runtime().settings.effective_auth_mode


def current_identity(*, allow_session: bool = False) -> Identity:
    """The caller's tenant, or a 400/401 problem. `allow_session`: the dashboard's login.
    The system's own tenant (`ORCH_SYSTEM_TENANT`, archival's jobs and their per-tenant
    reports) is nobody's to act as, whatever the way in."""
    identity = _identity(allow_session)
    if is_system_tenant(identity.tenant_id):
        raise Problem(400, "Invalid tenant", f"{identity.tenant_id!r} is the system's own tenant.")
    return identity


def is_system_tenant(tenant_id: str) -> bool:
    """Whether `tenant_id` is the system's own (`ORCH_SYSTEM_TENANT`), which no one may act
    as: its jobs (archival's) hold every tenant's counts."""
    return tenant_id == _runtime().settings.system_tenant


def _identity(allow_session: bool) -> Identity:
    if auth_mode() is AuthMode.TRUSTED_HEADERS:
        if allow_session and TENANT_HEADER not in request.headers and may_pick_tenant():
            picked = session.get(SESSION_PICKED)
            if isinstance(picked, str) and tenant_id_problem(picked) is None:
                return Identity(tenant_id=picked, user_id=None)
        return _from_headers()
    if allow_session and SESSION_TENANT in session:
        return _from_session()
    return _from_api_key()


def _from_api_key() -> Identity:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = (
        apikeys.authenticate(_runtime().database, token.strip())
        if (scheme.lower() == "bearer")
        else None
    )
    if key is None:
        raise Problem(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return Identity(tenant_id=key.tenant_id, user_id=f"key:{key.name}")


def _from_session() -> Identity:
    """The tenant of a dashboard session, checked on every request against its key: the
    key must still be active and belong to that very tenant."""
    key_id, tenant_id = session.get(SESSION_KEY), session.get(SESSION_TENANT)
    if not (
        isinstance(key_id, str)
        and isinstance(tenant_id, str)
        and apikeys.active_for(_runtime().database, key_id, tenant_id)
    ):
        session.clear()  # revoked, or not this tenant's key: log out
        raise Problem(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return Identity(tenant_id=tenant_id, user_id=f"key:{key_id}")


def _from_headers() -> Identity:
    expected = _runtime().settings.gateway_secret
    if expected is not None:
        presented = request.headers.get(GATEWAY_HEADER, "")
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Problem(401, "Unauthorized")
    tenant = request.headers.get(TENANT_HEADER, "").strip()
    if not tenant:
        raise Problem(400, "Missing tenant", f"The {TENANT_HEADER} header is required.")
    if problem := tenant_id_problem(tenant):
        raise Problem(400, "Invalid tenant", f"{TENANT_HEADER} {problem}.")
    user = request.headers.get(USER_HEADER, "").strip() or None
    if user is not None and (problem := tenant_id_problem(user)):  # user ids look the same
        raise Problem(400, "Invalid user", f"{USER_HEADER} {problem}.")
    return Identity(tenant_id=tenant, user_id=user)


def may_pick_tenant() -> bool:
    """Whether the dashboard may let a person pick the tenant: development, trusted
    headers, no gateway secret."""
    settings = _runtime().settings
    return (
        settings.is_development
        and settings.effective_auth_mode is AuthMode.TRUSTED_HEADERS
        and settings.gateway_secret is None
    )


def pick_tenant(tenant: str) -> str | None:
    """Remember `tenant` for this browser's dashboard; why not, if it cannot name one."""
    tenant = tenant.strip()
    if problem := tenant_id_problem(tenant):
        return f"A tenant id {problem}."
    if is_system_tenant(tenant):
        return f"{tenant!r} is the system's own tenant."
    session[SESSION_PICKED] = tenant
    return None


def log_in_with_key(presented: str) -> Identity | None:
    """Dashboard login: remember the key's tenant in the signed, HTTP-only session."""
    key = apikeys.authenticate(_runtime().database, presented.strip())
    if key is None or is_system_tenant(key.tenant_id):
        return None  # a key for the system's own tenant opens nothing, here as elsewhere
    session.clear()
    session[SESSION_TENANT] = key.tenant_id
    session[SESSION_KEY] = key.id
    return Identity(tenant_id=key.tenant_id, user_id=f"key:{key.name}")


def session_secret(settings: Settings) -> str:
    """What signs the dashboard's session cookie.

    In production, derived from the service secret: it never leaves the process, and
    rotating the service secret logs everyone out. In development the service secret is
    the public `dev-secret`, so anyone could sign a session; there it is a random key kept
    in the state folder, made once and shared by the web's processes.
    """
    if not settings.is_development:
        secret = (settings.service_auth_secret or "").encode()
        return hmac.new(secret, b"orchestrator-session", hashlib.sha256).hexdigest()
    return _shared_random_key(settings.state_dir / SESSION_SIGNING_FILE)


def _shared_random_key(path: Path) -> str:
    """The key in `path`, made on first use. The web's processes start together, so the
    file appears whole or not at all: written aside, then linked into place (a link
    fails if another process won), never read half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as draft:
            draft.write(secrets.token_hex(32))
            draft.flush()
            os.fsync(draft.fileno())
        os.chmod(draft.name, 0o600)
        try:
            os.link(draft.name, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(draft.name)
    key = path.read_text().strip()
    if len(key) != 64:
        raise ConfigurationError(f"{path} does not hold a session key; remove it to make one")
    return key
