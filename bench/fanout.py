"""Fan-out and fan-in: one job spawning N no-op children and a join that runs once after the
last, beside a Celery `chord` of N no-op tasks and a callback, with a Redis result backend
(what a chord needs), on the same machine.

The orchestrator's clock runs from the creation of the fan-out job to its join's
`finished_at` (written by the worker); Celery's from `apply_async` to the callback's result.
Rates are children a second; the ratio is ours over Celery's, within each round.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from celery import chord, group

from bench.harness import (
    Servers,
    add_durability_option,
    celery_worker,
    dispatcher,
    median,
    orchestrator_settings,
    raw_celery,
    report,
    servers,
    settings_env,
    wait_ping,
)
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob


def orchestrator_seconds(
    env: Servers, children: int, rounds: int, folder: Path, *, workflow: bool = False
) -> list[float]:
    settings = orchestrator_settings(env.database_url("postgresql"), env.redis_url(6))
    node = f"fan-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker(
        "tasks.worker", settings_env(settings), folder / "fan.log", node, queues="default"
    )
    runtime = Runtime.build(settings)
    feeder = None
    try:
        feeder = dispatcher(settings, folder / "fan-dispatcher.log")
        wait_ping(create_celery_app(settings), node)
        return [_one_fan_out(runtime, children, workflow=workflow) for _ in range(rounds)]
    finally:
        if feeder is not None:
            feeder.stop()
        worker.stop()
        runtime.database.dispose()


def _one_fan_out(runtime: Runtime, children: int, *, workflow: bool) -> float:
    """Seconds from the creation to the end of the join (for a workflow, its last gate,
    which ends once the join step's job has)."""
    request = (
        NewJob(tenant_id="bench", type="BENCH_MAP", input={"items": list(range(children))})
        if workflow
        else NewJob(tenant_id="bench", type="BENCH_FAN_OUT", input={"children": children})
    )
    started = datetime.now(UTC)
    join_id = runtime.service.create(request).details.steps[-1].id
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with runtime.database.session() as session:
            done = session.scalar(
                sa.select(Job.finished_at).where(Job.id == join_id, Job.status == "succeeded")
            )
        if done is not None:
            return (done - started).total_seconds()
        time.sleep(0.01)
    raise TimeoutError(f"join {join_id} did not finish")


def chord_seconds(env: Servers, children: int, rounds: int, folder: Path) -> list[float]:
    with raw_celery(env, 7, folder, "chord") as app:
        timings = []
        for _ in range(rounds):
            started = time.perf_counter()
            header = group(app.signature("raw.step") for _ in range(children))
            chord(header)(app.signature("raw.step")).get(timeout=600)
            timings.append(time.perf_counter() - started)
        return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workflow", action="store_true", help="the declared form: a map step and its join"
    )
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        ours = orchestrator_seconds(
            env, args.children, args.rounds, args.folder, workflow=args.workflow
        )
        raw = chord_seconds(env, args.children, args.rounds, args.folder)
    rows = [
        {
            "system": name,
            "seconds (median)": median(values),
            "children/s": args.children / median(values),
        }
        for name, values in (
            (
                "orchestrator workflow map + join"
                if args.workflow
                else "orchestrator fan-out + join",
                ours,
            ),
            ("celery chord, redis backend", raw),
        )
    ]
    summary = {
        "children": args.children,
        "workflow": args.workflow,
        "rounds": args.rounds,
        "orchestrator_s": [round(v, 3) for v in ours],
        "chord_s": [round(v, 3) for v in raw],
        "ratio_rate": median(raw) / median(ours),
    }
    report("fan-out and join vs chord", rows, summary)


if __name__ == "__main__":
    main()
