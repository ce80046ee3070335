"""`orchestrator dev`: the whole system on one machine, as `make run` starts it.

An embedded Redis (unless `ORCH_REDIS_URL` is set), migrations, then web, worker, beat and
Flower under one supervisor: one Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from contextlib import ExitStack

from honcho.manager import Manager
from honcho.printer import Printer

from orchestrator import migrate, processes
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import Settings, load_settings

log = logging.getLogger("orchestrator.dev")


def run_dev() -> int:
    os.environ.setdefault("ORCH_ENV", "development")
    with ExitStack() as stack:
        if "ORCH_REDIS_URL" not in os.environ:
            settings = load_settings()
            redis = stack.enter_context(
                EmbeddedRedis.start(
                    port=settings.embedded_redis_port, data_dir=settings.state_dir / "redis"
                )
            )
            os.environ["ORCH_REDIS_URL"] = redis.url
            print(f"embedded Redis on {redis.url}", file=sys.stderr)
        settings = load_settings()
        migrate.upgrade(settings.database_url)
        return supervise(settings)


def supervise(settings: Settings) -> int:
    manager = Manager(Printer(sys.stdout))
    env = processes.environment(settings)
    for name in processes.PROCESS_NAMES:
        processes.prepare(name, settings)
        manager.add_process(name, shlex.join(processes.command(name, settings)), env=env)
    print(
        f"web  http://{settings.host}:{settings.port}   "
        f"flower  http://{settings.flower_address}:{settings.flower_port}",
        file=sys.stderr,
    )
    manager.loop()
    return int(manager.returncode or 0)
