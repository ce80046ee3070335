"""The client on `httpx.Client`: each method sends its route's `Call` (`routes`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Concatenate, ParamSpec, Self, TypeVar

import httpx

from orchestrator.client import polling, routes
from orchestrator.client.aliases import DeprecatedAlias
from orchestrator.client.calls import (
    Call,
    Endpoint,
    Page,
    described_by,
    service_headers,
    tenant_headers,
)
from orchestrator.client.routes import Job

P = ParamSpec("P")
T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


def _route(route: Callable[P, Call[T]]) -> Callable[Concatenate[Connection, P], T]:
    @described_by(route)
    def method(self: Connection, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(route(*args, **kwargs))

    return method


def _listing(
    route: Callable[P, Call[Page[T]]],
) -> Callable[Concatenate[Connection, P], Iterator[T]]:
    @described_by(route)
    def method(self: Connection, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self.run_pages(route(*args, **kwargs))

    return method


def _waiting(
    route: Callable[P, polling.Waiting],
) -> Callable[Concatenate[Connection, P], Job]:
    @described_by(route)
    def method(self: Connection, /, *args: P.args, **kwargs: P.kwargs) -> Job:
        waiting = route(*args, **kwargs)
        job = self.run(waiting.call)
        while (pause := waiting.pause_after(job)) is not None:
            time.sleep(pause)
            job = self.run(waiting.call)
        return job

    return method


class Connection:
    """What both sync clients share: where to call, with which credentials, over which
    connection pool. `http`: your own `httpx.Client` (a transport, a proxy, more headers
    such as `X-Gateway-Secret`); its settings apply, `timeout` does not, and you close
    it. Otherwise the client makes one and closes it on `close()` or leaving `with`."""

    def __init__(
        self,
        base_url: str,
        credentials: Mapping[str, str],
        *,
        timeout: float,
        http: httpx.Client | None,
    ) -> None:
        self.endpoint = Endpoint(base_url, credentials)
        self.http = http if http is not None else httpx.Client(timeout=timeout)
        self._owns_http = http is None

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, call: Call[T]) -> T:
        """Send one call and read its answer; `ApiError` for an error answer."""
        return call.answer(self.http.send(self.endpoint.request(self.http, call)))

    def run_pages(self, call: Call[Page[T]]) -> Iterator[T]:
        """Every item of a listing, a page at a time."""
        following: Call[Page[T]] | None = call
        while following is not None:
            page = self.run(following)
            yield from page.items
            following = page.next

    health = _route(routes.health)
    readiness = _route(routes.readiness)


class Client(Connection):
    """A tenant's client: `api_key` for api-key deployments, or `tenant` (and `user`)
    behind a trusted gateway. Methods answer the API's JSON as dicts."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        credentials = tenant_headers(api_key=api_key, tenant=tenant, user=user)
        super().__init__(base_url, credentials, timeout=timeout, http=http)

    send_job = _route(routes.send_job)
    schedule_job = _route(routes.schedule_job)
    send_jobs = _route(routes.send_jobs)
    get_job = _route(routes.get_job)
    list_jobs = _listing(routes.list_jobs)
    job_events = _route(routes.job_events)
    job_children = _listing(routes.job_children)
    cancel_job = _route(routes.cancel_job)
    retry_job = _route(routes.retry_job)
    retry_failed_jobs = _route(routes.retry_failed_jobs)
    stats = _route(routes.stats)
    wait_for_job = _waiting(polling.wait_for_job)

    # The first names, until the next minor release.
    send = DeprecatedAlias(send_job, delay_seconds="delay")
    send_batch = DeprecatedAlias(send_jobs)
    get = DeprecatedAlias(get_job)
    list = DeprecatedAlias(list_jobs, job_type="type")
    events = DeprecatedAlias(job_events)
    children = DeprecatedAlias(job_children)
    cancel = DeprecatedAlias(cancel_job)
    retry = DeprecatedAlias(retry_job)
    retry_failed = DeprecatedAlias(retry_failed_jobs, job_type="type")
    wait = DeprecatedAlias(wait_for_job)


class AdminClient(Connection):
    """An operator's client for `/admin`, with the service secret (`X-Service-Auth`)."""

    def __init__(
        self,
        base_url: str,
        *,
        service_secret: str,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, service_headers(service_secret), timeout=timeout, http=http)

    archive = _route(routes.archive)
    maintenance_job = _route(routes.maintenance_job)
    maintenance_runs = _route(routes.maintenance_runs)
    tenant_stats = _route(routes.tenant_stats)
    sweep = _route(routes.sweep)
    reap = _route(routes.reap)
    cron_tick = _route(routes.cron_tick)
