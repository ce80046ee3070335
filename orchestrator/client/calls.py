"""A `Call` is one request to the API and the way its answer is read. `routes` builds one
per route from a method's arguments; the sync and asyncio clients only send them, so
each route is described once for both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from orchestrator.client.errors import ApiError

Json = dict[str, Any]
Query = Mapping[str, str | int | float]
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

TENANT_HEADER = "X-Tenant-ID"
USER_HEADER = "X-User-ID"
SERVICE_AUTH_HEADER = "X-Service-Auth"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Json], T]
    params: Query = field(default_factory=dict)
    body: Json | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Error statuses whose body is an answer all the same (`/readyz`: 503 and its checks).
    accept: frozenset[int] = frozenset()

    def answer(self, response: httpx.Response) -> T:
        if response.is_error and response.status_code not in self.accept:
            raise ApiError.of(response)
        return self.read(_json(response))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, and the call for the page after it (None at the end)."""

    items: list[T]
    next: Call[Page[T]] | None


@dataclass(frozen=True)
class Endpoint:
    """Where calls go and the credentials every one of them carries."""

    base_url: str
    headers: Mapping[str, str]

    def request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method,
            self.base_url.rstrip("/") + call.path,
            params=call.params,
            json=call.body,
            headers={**self.headers, **call.headers},
        )


def tenant_headers(*, api_key: str | None, tenant: str | None, user: str | None) -> dict[str, str]:
    """An api key (`api-key` deployments), or the tenant and user a trusted gateway sets."""
    named = {
        "Authorization": f"Bearer {api_key}" if api_key else None,
        TENANT_HEADER: tenant,
        USER_HEADER: user,
    }
    return {header: value for header, value in named.items() if value}


def service_headers(service_secret: str) -> dict[str, str]:
    return {SERVICE_AUTH_HEADER: service_secret}


def _json(response: httpx.Response) -> Json:
    try:
        answer: Json = response.json()
    except ValueError as exc:  # something in front of the API answered instead
        raise ApiError(
            response.status_code,
            {"title": "Answer is not JSON", "detail": response.text[:200].strip() or None},
        ) from exc
    return answer


def described_by(route: Callable[..., Any]) -> Callable[[F], F]:
    """Give a client's method the name, docstring and signature of the route it sends, so
    `help()` and the documentation show the route's arguments."""

    def describe(method: F) -> F:
        signature = inspect.signature(route)
        this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        method.__name__ = method.__qualname__ = route.__name__
        method.__doc__ = route.__doc__
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[this, *signature.parameters.values()],
            return_annotation=inspect.Signature.empty,  # the route's is a Call, not the answer
        )
        return method

    return describe
