"""Job types for the benchmarks: no work at all, so what is measured is the machinery."""

from __future__ import annotations

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
