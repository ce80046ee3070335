"""Trace context that travels with a job: the W3C `traceparent` of the request (or run) that
made it ready is kept on its row, and the dispatcher publishes its message in that trace,
so one trace covers the API call, the dispatch, the worker's run and the next step.

OpenTelemetry is optional: with only its API installed (Celery brings it), every span is
a no-op and no traceparent is recorded. `instrument` switches the Celery and Flask
instrumentations on when their packages are installed (`opentelemetry-sdk`,
`opentelemetry-instrumentation-celery`, `opentelemetry-instrumentation-flask`) and a
tracer provider is configured (`OTEL_*` variables, or a test's in-memory exporter). The
web app, each worker process and the dispatcher call it as they start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The current span's `traceparent`, or None outside a recording span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def resumed(traceparent: str | None) -> Iterator[None]:
    """Run the block in the trace `traceparent` names (nothing happens without one)."""
    if not traceparent:
        yield
        return
    token = context.attach(_PROPAGATOR.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def instrument(app: Any = None) -> list[str]:
    """Switch on the instrumentations installed: Celery's (publish and run spans, the
    context carried in message headers) and, given a Flask `app`, Flask's. Returns their
    names."""
    done: list[str] = []
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
    except ImportError:
        pass
    else:
        if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
            CeleryInstrumentor().instrument()
        done.append("celery")
    if app is not None:
        try:
            from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: PLC0415
        except ImportError:
            pass
        else:
            FlaskInstrumentor().instrument_app(app)
            done.append("flask")
    return done
