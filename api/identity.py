"""Who is calling. The one place that decides a request's tenant, so it can be swapped.

For now the tenant comes from `X-Tenant-ID`, trusted as set by a gateway in front of us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import request

from api.errors import Problem

TENANT_HEADER = "X-Tenant-ID"
USER_HEADER = "X-User-ID"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    user_id: str | None


def current_identity() -> Identity:
    tenant = request.headers.get(TENANT_HEADER, "").strip()
    if not tenant:
        raise Problem(400, "Missing tenant", f"The {TENANT_HEADER} header is required.")
    if not ID_PATTERN.match(tenant):
        raise Problem(400, "Invalid tenant", f"{TENANT_HEADER} must match {ID_PATTERN.pattern}.")
    user = request.headers.get(USER_HEADER, "").strip() or None
    if user is not None and not ID_PATTERN.match(user):
        raise Problem(400, "Invalid user", f"{USER_HEADER} must match {ID_PATTERN.pattern}.")
    return Identity(tenant_id=tenant, user_id=user)
