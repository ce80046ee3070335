"""Job types for the benchmarks: no work at all, so what is measured is the machinery."""

from __future__ import annotations

import time

from pydantic import BaseModel

from orchestrator import JobContext, define_job


class Nothing(BaseModel):
    pass


@define_job("BENCH_NOOP", input=Nothing, time_limit=60)
def noop(ctx: JobContext, data: Nothing) -> None:
    return None


@define_job("BENCH_PIPELINE", input=Nothing, then="BENCH_NOOP", time_limit=60)
def first_step(ctx: JobContext, data: Nothing) -> None:
    return None


@define_job("BENCH_SLOW", input=Nothing, time_limit=60)
def slow(ctx: JobContext, data: Nothing) -> None:
    """20 ms of waiting: a tenant's backlog that takes real time to drain."""
    time.sleep(0.02)
