"""One trace from the API call to the pipeline's last step, with OpenTelemetry's Celery and
Flask instrumentations and an in-memory span exporter.

Everything runs in this process so that one exporter sees every span: the Flask app (its
test client), the dispatcher's fill, and a Celery worker in a thread consuming from a real
Redis. The job's traceparent is kept on its row, so the trace also crosses the database:
the dispatcher publishes in it, and the step a success releases carries the run's on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once

import api
from orchestrator import tracing
from orchestrator.celery_app import create_worker_app
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.states import JobStatus

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter behind this process's tracer provider, for this module only.

    OpenTelemetry lets a process set its provider once; the tests after these expect none
    (nothing instrumented, as in a process without `OTEL_TRACES_EXPORTER`), so the module
    puts back the unset state (private to the API, hence the two names below)."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    yield _EXPORTER
    CeleryInstrumentor().uninstrument()
    provider.shutdown()
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


def _settings(redis_server: EmbeddedRedis, database_url: str) -> Settings:
    return load_settings(
        env="development",
        database_url=database_url,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7",
        job_modules="tests.jobtypes",
        worker_queues="default",
    )


@pytest.fixture(scope="module")
def worker_app(redis_server: EmbeddedRedis) -> Celery:
    """One per process: its tasks find each test's runtime when they run."""
    return create_worker_app(_settings(redis_server, "sqlite://"))


@pytest.fixture
def runtime(
    database_url: str, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Runtime]:
    """On SQLite the dispatcher's fills send every step; on PostgreSQL a creation and a
    success admit and send theirs themselves (their one-statement paths)."""
    settings = _settings(redis_server, database_url)
    # The worker's pool starts by building its process's runtime afresh: from these.
    monkeypatch.setattr("orchestrator.runtime.get_settings", lambda: settings)
    runtime = Runtime.build(settings)
    yield runtime
    Runtime.reset()
    runtime.database.dispose()


@pytest.mark.parametrize("delay", [None, 0.3], ids=["sent-by-the-request", "sent-when-due"])
def test_one_trace_covers_the_request_the_dispatch_and_every_step(
    exporter: InMemorySpanExporter, runtime: Runtime, worker_app: Celery, delay: float | None
) -> None:
    """At once, the request sends the job in its own span; delayed, a fill sends it later,
    outside any span, in the trace kept on the job's row."""
    exporter.clear()
    app = api.create_app(runtime=runtime)
    assert tracing.instrument(app) == ["celery", "flask"]
    try:
        with start_worker(worker_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            response = app.test_client().post(
                "/v1/jobs",
                json={"type": "TEST_FLAKY", "input": {}, "delaySeconds": delay},
                headers={"X-Tenant-ID": "tnt_t"},
            )
            assert response.status_code == 201, response.get_json()
            steps = [step["id"] for step in response.get_json()["pipeline"]["steps"]]
            _dispatch_until_done(runtime, steps)
    finally:
        FlaskInstrumentor().uninstrument_app(app)

    spans = exporter.get_finished_spans()
    request = _one(spans, SpanKind.SERVER, "POST")
    publishes = [s for s in spans if s.kind is SpanKind.PRODUCER]
    runs = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert [s.name for s in runs] == ["run/jobs.TEST_FLAKY", "run/jobs.TEST_ECHO_UPSTREAM"]
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}
    # request -> publish -> run -> publish of the next step -> its run
    first_publish = _child_of(publishes, request)
    first_run = _child_of(runs, first_publish)
    next_publish = _child_of(publishes, first_run)
    assert _child_of(runs, next_publish).name == "run/jobs.TEST_ECHO_UPSTREAM"


def _dispatch_until_done(runtime: Runtime, job_ids: list[str], timeout: float = 30) -> None:
    """Play the dispatcher (a fill now and then) until every job has succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime.admission.send(runtime.admission.fill())
        with runtime.database.session() as session:
            statuses = {session.get(Job, job_id).status for job_id in job_ids}  # type: ignore[union-attr]
        if statuses == {JobStatus.SUCCEEDED}:
            return
        time.sleep(0.05)
    raise AssertionError(f"the pipeline did not finish: {statuses}")


def _one(spans: tuple[ReadableSpan, ...], kind: SpanKind, name_start: str) -> ReadableSpan:
    [span] = [s for s in spans if s.kind is kind and s.name.startswith(name_start)]
    return span


def _child_of(spans: list[ReadableSpan], parent: ReadableSpan) -> ReadableSpan:
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    assert len(children) == 1, (parent.name, [s.name for s in spans])
    return children[0]
