"""Who is calling: the one place that decides a request's tenant.

Two modes (`ORCH_AUTH_MODE`):
- `api-key`: `Authorization: Bearer ork_...` names the tenant (the default outside
  development). The dashboard takes the same key once, at login, into a signed session.
- `trusted-headers`: a gateway in front of us sets `X-Tenant-ID` (and `X-User-ID`); with
  `ORCH_GATEWAY_SECRET` set, a request must also carry it in `X-Gateway-Secret`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import current_app, request, session

from api.errors import Problem
from orchestrator import apikeys
from orchestrator.ids import tenant_id_problem
from orchestrator.runtime import Runtime
from orchestrator.settings import AuthMode

TENANT_HEADER = "X-Tenant-ID"
USER_HEADER = "X-User-ID"
GATEWAY_HEADER = "X-Gateway-Secret"
SESSION_TENANT = "tenant_id"
SESSION_KEY = "api_key_id"


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
    """The caller's tenant, or a 400/401 problem. `allow_session`: the dashboard's login."""
    if auth_mode() is AuthMode.TRUSTED_HEADERS:
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
    key_id = session.get(SESSION_KEY)
    if not isinstance(key_id, str) or not apikeys.is_active(_runtime().database, key_id):
        session.clear()  # the key was revoked: log out
        raise Problem(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return Identity(tenant_id=str(session[SESSION_TENANT]), user_id=f"key:{key_id}")


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


def log_in_with_key(presented: str) -> Identity | None:
    """Dashboard login: remember the key's tenant in the signed, HTTP-only session."""
    key = apikeys.authenticate(_runtime().database, presented.strip())
    if key is None:
        return None
    session.clear()
    session[SESSION_TENANT] = key.tenant_id
    session[SESSION_KEY] = key.id
    return Identity(tenant_id=key.tenant_id, user_id=f"key:{key.name}")
