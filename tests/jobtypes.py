"""Job types the tests use; workers load them through `ORCH_JOB_MODULES=tests.jobtypes`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import JobContext, PermanentError, RetryPolicy, define_job


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
