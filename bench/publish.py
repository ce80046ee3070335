"""What publishing costs the dispatcher: CPU per message for each `ORCH_PUBLISH` mode, into
a real Redis, in batches the size of a fill (Celery's producer, batched into one round
trip, against the same messages built here and pushed in one pipeline).

The issue that made the producer the default asked for the direct path to stay as an
opt-in if the producer cost more than 5% of drain throughput; this gives the figure to
weigh that: the difference per message against what a job costs the machine
(`bench.throughput`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import median, report, servers
from orchestrator.dispatch import Delivery
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app
from orchestrator.settings import PublishMode, load_settings


def cpu_per_message(url: str, mode: PublishMode, batch: int, batches: int) -> float:
    """Microseconds of this process's CPU per message."""
    settings = load_settings(env="development", redis_url=url, worker_queues="default")
    sender = CeleryDispatcher(create_celery_app(settings), publish=mode)
    sender.send([Delivery("job_warm", "BENCH_NOOP", "default", 1)])  # connect, import
    started = time.process_time()
    for n in range(batches):
        sender.send(
            [
                Delivery(f"job_{n}_{i}", "BENCH_NOOP", "default", n * batch + i, tenant_id="t")
                for i in range(batch)
            ]
        )
    spent = time.process_time() - started
    redis.Redis.from_url(url).flushdb()
    return spent / (batch * batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16, help="messages a fill sends")
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    figures: dict[str, list[float]] = {mode.value: [] for mode in PublishMode}
    with servers(args.folder, postgres=False) as env:
        url = env.redis_url(3)
        for _ in range(args.rounds):  # alternated, so that drift touches both alike
            for mode in PublishMode:
                figures[mode.value].append(cpu_per_message(url, mode, args.batch, args.batches))
    rows = [{"mode": mode, "us/message": median(values)} for mode, values in figures.items()]
    report(
        f"publish CPU per message (batches of {args.batch})",
        rows,
        {f"{mode}_us_per_message": median(values) for mode, values in figures.items()},
    )


if __name__ == "__main__":
    main()
