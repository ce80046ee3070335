"""The asyncio client on `httpx.AsyncClient`: each method sends its route's `Call`
(`routes`), awaited; listings are async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from orchestrator.client import polling, routes
from orchestrator.client.calls import (
    Call,
    Endpoint,
    Page,
    described_by,
    service_headers,
    tenant_headers,
)
from orchestrator.client.routes import Job
from orchestrator.client.sync import DEFAULT_TIMEOUT

P = ParamSpec("P")
T = TypeVar("T")
Awaited = Coroutine[Any, Any, T]


def _route(route: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncConnection, P], Awaited[T]]:
    @described_by(route)
    async def method(self: AsyncConnection, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run(route(*args, **kwargs))

    return method


def _listing(
    route: Callable[P, Call[Page[T]]],
) -> Callable[Concatenate[AsyncConnection, P], AsyncIterator[T]]:
    @described_by(route)
    def method(self: AsyncConnection, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self.run_pages(route(*args, **kwargs))

    return method


def _waiting(
    route: Callable[P, polling.Waiting],
) -> Callable[Concatenate[AsyncConnection, P], Awaited[Job]]:
    @described_by(route)
    async def method(self: AsyncConnection, /, *args: P.args, **kwargs: P.kwargs) -> Job:
        waiting = route(*args, **kwargs)
        job = await self.run(waiting.call)
        while (pause := waiting.pause_after(job)) is not None:
            await asyncio.sleep(pause)
            job = await self.run(waiting.call)
        return job

    return method


class AsyncConnection:
    """What both asyncio clients share, as `sync.Connection` does for the sync ones: `http`
    is your own `httpx.AsyncClient` (you close it), else one made here and closed by
    `aclose()` or leaving `async with`."""

    def __init__(
        self,
        base_url: str,
        credentials: Mapping[str, str],
        *,
        timeout: float,
        http: httpx.AsyncClient | None,
    ) -> None:
        self.endpoint = Endpoint(base_url, credentials)
        self.http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def run(self, call: Call[T]) -> T:
        """Send one call and read its answer; `ApiError` for an error answer."""
        return call.answer(await self.http.send(self.endpoint.request(self.http, call)))

    async def run_pages(self, call: Call[Page[T]]) -> AsyncIterator[T]:
        """Every item of a listing, a page at a time."""
        following: Call[Page[T]] | None = call
        while following is not None:
            page = await self.run(following)
            for item in page.items:
                yield item
            following = page.next

    health = _route(routes.health)
    readiness = _route(routes.readiness)


class AsyncClient(AsyncConnection):
    """`Client`'s methods, to be awaited (`list_jobs` and `job_children` are iterated
    with `async for`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
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


class AsyncAdminClient(AsyncConnection):
    """`AdminClient`'s methods, to be awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        service_secret: str,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, service_headers(service_secret), timeout=timeout, http=http)

    archive = _route(routes.archive)
    maintenance_job = _route(routes.maintenance_job)
    maintenance_runs = _route(routes.maintenance_runs)
    tenant_stats = _route(routes.tenant_stats)
    sweep = _route(routes.sweep)
    reap = _route(routes.reap)
    cron_tick = _route(routes.cron_tick)
