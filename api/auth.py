"""Service credentials for internal and admin callers (Cloud Scheduler, operators).

`X-Service-Auth` is compared in constant time against `ORCH_SERVICE_AUTH_SECRET`; a wrong
or missing secret is a bare 401 that says nothing about which part was wrong.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, request

from api.errors import Problem
from orchestrator.runtime import Runtime

SERVICE_AUTH_HEADER = "X-Service-Auth"
F = TypeVar("F", bound=Callable[..., Any])


def verify_service_secret(presented: str | None, expected: str | None) -> bool:
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def service_auth_required(view: F) -> F:
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        runtime: Runtime = current_app.extensions["orchestrator"]
        presented = request.headers.get(SERVICE_AUTH_HEADER)
        if not verify_service_secret(presented, runtime.settings.service_auth_secret):
            raise Problem(401, "Unauthorized", headers={"WWW-Authenticate": SERVICE_AUTH_HEADER})
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]
