"""Job types for the benchmarks: no work at all, so what is measured is the machinery."""

from __future__ import annotations

import time

from pydantic import BaseModel

from orchestrator import JobContext, define_job, define_workflow, map_step, step


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


class FanOut(BaseModel):
    children: int = 1000


@define_job("BENCH_FAN_OUT", input=FanOut, then="BENCH_JOIN", time_limit=300)
def fan_out(ctx: JobContext, data: FanOut) -> None:
    """`children` no-op children; the next step joins them."""
    for _ in range(data.children):
        ctx.spawn("BENCH_NOOP", {})


@define_job("BENCH_JOIN", input=Nothing, time_limit=300)
def join(ctx: JobContext, data: Nothing) -> int:
    """Reads its children's results, as a chord's callback receives them."""
    return len(ctx.children_results())


class Item(BaseModel):
    item: int = 0


class Items(BaseModel):
    items: list[int]


@define_job("BENCH_ITEM", input=Item, time_limit=60)
def item(ctx: JobContext, data: Item) -> None:
    return None


@define_job("BENCH_MAP_JOIN", input=Nothing, time_limit=300)
def map_join(ctx: JobContext, data: Nothing) -> int:
    """Reads the map's results, as a chord's callback receives them."""
    return len(ctx.result("items"))


# The same fan-out declared: a map of no-op jobs over the input's list, then its join.
define_workflow(
    "BENCH_MAP",
    input=Items,
    steps=[
        map_step("items", "BENCH_ITEM", over="input.items", item="item"),
        step("join", "BENCH_MAP_JOIN", after=["items"]),
    ],
)
