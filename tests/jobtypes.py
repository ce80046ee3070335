"""Job types the tests use; workers load them through `ORCH_JOB_MODULES=tests.jobtypes`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

from orchestrator import (
    JobContext,
    PermanentError,
    RetryPolicy,
    define_job,
    define_workflow,
    map_step,
    step,
)
from orchestrator.canvas import chord, signature


class FlakyInput(BaseModel):
    failTimes: int = 0


class EffectInput(BaseModel):
    effectFile: str
    sleep: float = 0.0


class EmptyInput(BaseModel):
    pass


@define_job(
    "TEST_FLAKY",
    input=FlakyInput,
    retry=RetryPolicy(max_attempts=4, backoff="exponential", initial_delay=0.5, max_delay=5),
    then="TEST_ECHO_UPSTREAM",
    time_limit=30,
)
def flaky(ctx: JobContext, data: FlakyInput) -> dict[str, Any]:
    """Fails its first `failTimes` attempts, then succeeds."""
    if ctx.attempt <= data.failTimes:
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@define_job("TEST_ECHO_UPSTREAM", input=EmptyInput, time_limit=30)
def echo_upstream(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    return {"upstream": ctx.upstream_result}


@define_job("TEST_EXPLODES", input=EmptyInput, then="TEST_ECHO_UPSTREAM", time_limit=30)
def explodes(ctx: JobContext, data: EmptyInput) -> None:
    raise PermanentError("the input can never work")


@define_job("TEST_EFFECT", input=EffectInput, time_limit=30)
def effect(ctx: JobContext, data: EffectInput) -> dict[str, Any]:
    """Appends one line per run to a file: the test counts the lines to count the runs."""
    with Path(data.effectFile).open("a") as handle:
        handle.write(f"{ctx.job_id} attempt={ctx.attempt}\n")
    time.sleep(data.sleep)
    return {"wrote": data.effectFile}


class LoopInput(BaseModel):
    effectFile: str
    seconds: float = 10.0


@define_job("TEST_LOOP", input=LoopInput, then="TEST_ECHO_UPSTREAM", time_limit=60)
def loop(ctx: JobContext, data: LoopInput) -> dict[str, Any]:
    """Writes a line every 0.1 s with plain `time.sleep`: it never checks for a cancel, so
    stopping it proves the worker interrupts handlers that do not cooperate."""
    deadline = time.monotonic() + data.seconds
    with Path(data.effectFile).open("a", buffering=1) as handle:
        while time.monotonic() < deadline:
            handle.write(f"{ctx.job_id} tick\n")
            time.sleep(0.1)
    return {"ticks": "done"}


@define_job(
    "TEST_SLOW_RETRY",
    input=EffectInput,
    retry=RetryPolicy(max_attempts=5, backoff="fixed", initial_delay=4, jitter=0),
    time_limit=30,
)
def slow_retry(ctx: JobContext, data: EffectInput) -> None:
    """Records each run, then fails; its next attempt waits 4 s."""
    with Path(data.effectFile).open("a") as handle:
        handle.write(f"{ctx.job_id} attempt={ctx.attempt}\n")
    raise RuntimeError("always fails")


class GateInput(BaseModel):
    gateFile: str


@define_job("TEST_GATED", input=GateInput, then="TEST_ECHO_UPSTREAM", time_limit=30)
def gated(ctx: JobContext, data: GateInput) -> dict[str, Any]:
    """Fails for good until the gate file exists: a dead letter that a manual retry fixes."""
    if not Path(data.gateFile).exists():
        raise PermanentError(f"{data.gateFile} is missing")
    return {"gate": "open"}


@define_job(
    "TEST_PARKED", input=EffectInput, then="TEST_ECHO_UPSTREAM", queue="parked", time_limit=30
)
def parked(ctx: JobContext, data: EffectInput) -> None:
    """On a queue no worker consumes until a test asks one to: it stays `queued`."""
    with Path(data.effectFile).open("a") as handle:
        handle.write(f"{ctx.job_id} attempt={ctx.attempt}\n")


class PartitionInput(BaseModel):
    effectFile: str
    firstRunSeconds: float = 8.0


@define_job("TEST_PARTITION", input=PartitionInput, queue="partition", time_limit=60)
def partition(ctx: JobContext, data: PartitionInput) -> dict[str, Any]:
    """The first attempt is slow (long enough to be cut off mid-run); later ones are quick."""
    with Path(data.effectFile).open("a") as handle:
        handle.write(f"{ctx.job_id} attempt={ctx.attempt}\n")
    if ctx.attempt == 1:
        time.sleep(data.firstRunSeconds)
    return {"attempt": ctx.attempt}


class SleepInput(BaseModel):
    seconds: float = 0.05
    effectFile: str | None = None
    ignoreCancel: bool = False


@define_job("TEST_SLEEP", input=SleepInput, time_limit=120)
def sleep_for(ctx: JobContext, data: SleepInput) -> dict[str, Any]:
    """Sleeps, then records its run. With `ignoreCancel` it sleeps through the interrupt a
    cancel sends: a handler that does not cooperate, which only its time limit ends."""
    deadline = time.monotonic() + data.seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            if not data.ignoreCancel:
                raise
    if data.effectFile:
        with Path(data.effectFile).open("a") as handle:
            handle.write(f"{ctx.job_id} attempt={ctx.attempt}\n")
    return {"slept": data.seconds}


class FanOutInput(BaseModel):
    items: list[str]
    failItem: str | None = None  # this child fails for good
    failItems: list[str] = []
    childType: str = "TEST_FAN_CHILD"
    childSleep: float = 0.0


class FanChildInput(BaseModel):
    item: str
    fail: bool = False
    sleep: float = 0.0


@define_job("TEST_FAN_OUT", input=FanOutInput, then="TEST_FAN_JOIN", time_limit=30)
def fan_out(ctx: JobContext, data: FanOutInput) -> dict[str, Any]:
    """Spawns one child per item; its next step joins them."""
    for item in data.items:
        fail = item == data.failItem or item in data.failItems
        child = {"item": item, "fail": fail, "sleep": data.childSleep}
        ctx.spawn(data.childType, child)
    return {"spawned": len(data.items)}


@define_job("TEST_FAN_CHILD", input=FanChildInput, time_limit=30)
def fan_child(ctx: JobContext, data: FanChildInput) -> dict[str, Any]:
    if data.fail:
        raise PermanentError(f"item {data.item} cannot be done")
    time.sleep(data.sleep)
    return {"item": data.item.upper(), "upstream": ctx.upstream_result}


@define_job("TEST_FAN_JOIN", input=EmptyInput, time_limit=30)
def fan_join(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    return {"children": ctx.children_results(), "upstream": ctx.upstream_result}


# The same fan-out before joins with other failure policies.
define_job("TEST_FAN_OUT_ALL", input=FanOutInput, then="TEST_FAN_JOIN_ALL", time_limit=30)(fan_out)
define_job("TEST_FAN_OUT_ONE", input=FanOutInput, then="TEST_FAN_JOIN_ONE", time_limit=30)(fan_out)


@define_job("TEST_FAN_JOIN_ALL", input=EmptyInput, time_limit=30, allow_failures="all")
def fan_join_all(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    """Waits for every child, failed or not, and sees how each ended."""
    return {"children": ctx.children()}


@define_job("TEST_FAN_JOIN_ONE", input=EmptyInput, time_limit=30, allow_failures=1)
def fan_join_one(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    return {"children": ctx.children_results()}


# -- workflows ---------------------------------------------------------------------------


class FlowInput(BaseModel):
    """A workflow's input: its steps take the fields their own inputs declare."""

    items: list[str] = []
    failItems: list[str] = []
    failOnce: list[str] = []
    sleep: float = 0.0


class FlowPrepareInput(BaseModel):
    items: list[str]


class FlowItemInput(BaseModel):
    item: str
    failItems: list[str] = []
    failOnce: list[str] = []  # fail for good on their first attempt only
    sleep: float = 0.0


class FlowItemResult(BaseModel):
    item: str


@define_job("TEST_FLOW_PREPARE", input=FlowPrepareInput, time_limit=30)
def flow_prepare(ctx: JobContext, data: FlowPrepareInput) -> dict[str, Any]:
    return {"items": list(data.items), "count": len(data.items)}


@define_job("TEST_FLOW_ITEM", input=FlowItemInput, time_limit=30)
def flow_item(ctx: JobContext, data: FlowItemInput) -> dict[str, Any]:
    if data.item in data.failItems or (data.item in data.failOnce and ctx.attempt == 1):
        raise PermanentError(f"item {data.item} cannot be done")
    time.sleep(data.sleep)
    return {"item": data.item.upper()}


@define_job("TEST_FLOW_SUMMARY", input=EmptyInput, time_limit=30)
def flow_summary(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    """Reads its upstream steps' results by name, the map's typed."""
    items = ctx.result("items", list[FlowItemResult | None])
    return {
        "prepared": ctx.result("prepare"),
        "items": [None if item is None else item.item for item in items],
        "failed": ctx.failed_count("items"),
    }


def _flow(name: str, *, allow_failures: int | str = 0) -> None:
    define_workflow(
        name,
        input=FlowInput,
        steps=[
            step("prepare", "TEST_FLOW_PREPARE"),
            map_step(
                "items",
                "TEST_FLOW_ITEM",
                over="prepare.items",
                item="item",
                concurrency=2,
                after=["prepare"],
                allow_failures=allow_failures,  # type: ignore[arg-type]
            ),
            step("summary", "TEST_FLOW_SUMMARY", after=["items"]),
        ],
    )


_flow("TEST_FLOW")
_flow("TEST_FLOW_TOLERANT", allow_failures=1)


@define_job("TEST_CANVAS_SUMMARY", input=EmptyInput, time_limit=30)
def canvas_summary(ctx: JobContext, data: EmptyInput) -> dict[str, Any]:
    return {"first": ctx.result("TEST_FLOW_ITEM"), "second": ctx.result("TEST_FLOW_ITEM-2")}


define_workflow(
    "TEST_CANVAS",
    input=FlowInput,
    steps=chord(
        [signature("TEST_FLOW_ITEM", item="a"), signature("TEST_FLOW_ITEM", item="b")],
        signature("TEST_CANVAS_SUMMARY"),
    ),
)
