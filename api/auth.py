"""Service credentials for internal and admin callers (Cloud Tasks, Cloud Scheduler,
operators), checked before a request's body is read.

Two ways in: `X-Service-Auth` compared in constant time against
`ORCH_SERVICE_AUTH_SECRET`, or `Authorization: Bearer <Google-signed OIDC token>` with the
expected audience, a Google issuer, and (when configured) the expected service account.
A caller who fails both gets a bare 401 that says nothing about which check failed.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

import requests
from flask import current_app, request
from google.auth import exceptions as google_exceptions
from google.auth import jwt

from api.errors import Problem
from orchestrator.runtime import Runtime

log = logging.getLogger("orchestrator.auth")

SERVICE_AUTH_HEADER = "X-Service-Auth"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
CERTS_TTL_SECONDS = 3600.0
F = TypeVar("F", bound=Callable[..., Any])
Certs = Callable[[], Mapping[str, str]]


def verify_service_secret(presented: str | None, expected: str | None) -> bool:
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


class GoogleCerts:
    """Google's token-signing certificates, fetched over HTTPS and cached for an hour."""

    def __init__(self, url: str = GOOGLE_CERTS_URL) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] = {}
        self._fetched = 0.0

    def __call__(self) -> Mapping[str, str]:
        with self._lock:
            if time.monotonic() - self._fetched > CERTS_TTL_SECONDS:
                response = requests.get(self.url, timeout=5)
                response.raise_for_status()
                self._certs, self._fetched = response.json(), time.monotonic()
            return self._certs


class OidcVerifier:
    def __init__(self, audience: str, service_account: str, certs: Certs) -> None:
        self.audience = audience
        self.service_account = service_account
        self.certs = certs

    def verify(self, token: str) -> bool:
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=self.certs(), audience=self.audience, clock_skew_in_seconds=10
            )
        except (ValueError, google_exceptions.GoogleAuthError, requests.RequestException):
            return False
        if claims.get("iss") not in GOOGLE_ISSUERS:
            return False
        return claims.get("email") == self.service_account and bool(claims.get("email_verified"))


def _authorised() -> bool:
    runtime: Runtime = current_app.extensions["orchestrator"]
    if verify_service_secret(
        request.headers.get(SERVICE_AUTH_HEADER), runtime.settings.service_auth_secret
    ):
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # A scraper or script may send the secret as a bearer token; Google sends OIDC tokens.
    if verify_service_secret(token, runtime.settings.service_auth_secret):
        return True
    verifier: OidcVerifier | None = current_app.extensions.get("oidc_verifier")
    return verifier is not None and verifier.verify(token)


def service_auth_required(view: F) -> F:
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not _authorised():
            log.warning(
                "refused %s %s: bad service credentials",
                request.method,
                request.path,
                extra={"action": "auth_refused"},
            )
            raise Problem(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]
