"""`OTEL_TRACES_EXPORTER` sets up a tracer provider where the processes start, and nothing
else does: each case runs in a fresh interpreter (a process sets its provider once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
from opentelemetry import trace
from orchestrator import tracing
tracing.instrument()
with trace.get_tracer("test").start_as_current_span("hello"):
    print("traceparent", tracing.current_traceparent())
print("provider", type(trace.get_tracer_provider()).__name__)
shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
if shutdown:
    shutdown()
"""


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the assertion below shows stderr
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_console_exporter_prints_each_span() -> None:
    out = _run({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orch-test"})
    assert "provider TracerProvider" in out
    assert '"name": "hello"' in out
    assert '"service.name": "orch-test"' in out
    assert "traceparent 00-" in out


@pytest.mark.parametrize("value", ["", "none"])
def test_without_an_exporter_nothing_is_recorded(value: str) -> None:
    out = _run({"OTEL_TRACES_EXPORTER": value} if value else {})
    assert "provider ProxyTracerProvider" in out
    assert "traceparent None" in out
