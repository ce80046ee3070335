"""Trace context that travels with a job: the W3C `traceparent` of the request (or run) that
made it ready is kept on its row, and the dispatcher publishes its message in that trace,
so one trace covers the API call, the dispatch, the worker's run and the next step.

OpenTelemetry is optional: with only its API installed, every span is a no-op and no
traceparent is recorded. `instrument` switches the Celery and Flask instrumentations on
when their packages are installed (the `otel` extra) and, given `OTEL_TRACES_EXPORTER`
(`otlp` or `console`) and no tracer provider of the application's own, sets one up that
sends spans there. The web app, each worker process and the dispatcher call it as they
start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
log = logging.getLogger("orchestrator.tracing")


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
    names: none while no tracer provider records (the instrumentations' work per task
    and per request would be for spans nobody keeps)."""
    _provider_from_environment()
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return []
    done: list[str] = []
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
    except ImportError:
        pass
    else:
        # The instrumentations ship without type hints.
        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
        done.append("celery")
    if app is not None:
        try:
            from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: PLC0415
        except ImportError:
            pass
        else:
            FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]
            done.append("flask")
    return done


def _provider_from_environment() -> None:
    """`OTEL_TRACES_EXPORTER=otlp` (OTLP over HTTP, or gRPC with
    `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; the exporter's own `OTEL_EXPORTER_OTLP_*` say
    where) or `console`: spans are batched there, under `OTEL_SERVICE_NAME`. Done once per
    process, and not over a provider the application set itself."""
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if wanted not in ("otlp", "console"):
        return
    try:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s, but opentelemetry-sdk is not installed", wanted)
        return
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    try:
        exporter: SpanExporter = ConsoleSpanExporter() if wanted == "console" else _otlp_exporter()
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=otlp, but its exporter package is not installed")
        return
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def flush() -> None:
    """Send the spans still batched (a pool process about to exit: it leaves through
    `os._exit`, which runs no exit handlers, so the batch would be lost)."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()
