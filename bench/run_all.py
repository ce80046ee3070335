"""`make bench`: every benchmark in turn (pass `--quick` for small sizes, a smoke run)."""

from __future__ import annotations

import subprocess
import sys

FULL = [
    ["bench.throughput", "--jobs", "20000", "--rounds", "3", "--floor"],
    ["bench.api_create", "--seconds", "10", "--rounds", "3"],
    ["bench.latency", "--jobs", "300"],
    ["bench.growth", "--large", "1000000"],
    ["bench.memory", "--large", "100000"],
    ["bench.fairness", "--flood", "5000"],
    ["bench.resends", "--pipelines", "18000"],
    ["bench.publish"],
    ["bench.statements", "--jobs", "3000", "--rounds", "3"],
    ["bench.capacity", "--jobs", "5000"],
    ["bench.make_run"],
    ["bench.fanout"],
]
QUICK = [
    ["bench.throughput", "--jobs", "2000", "--rounds", "1"],
    ["bench.api_create", "--seconds", "3", "--rounds", "1", "--batch-seconds", "3"],
    ["bench.latency", "--jobs", "50"],
    ["bench.growth", "--large", "50000", "--waiting", "10000", "--requests", "100"],
    ["bench.memory", "--large", "10000"],
    ["bench.fairness", "--flood", "500"],
    ["bench.resends", "--pipelines", "500"],
    ["bench.publish", "--batches", "50", "--rounds", "1"],
    ["bench.statements", "--jobs", "300", "--rounds", "1"],
    ["bench.capacity", "--jobs", "500"],
    ["bench.make_run", "--pipelines", "50"],
    ["bench.fanout", "--children", "200", "--rounds", "1"],
]


def main() -> int:
    plan = QUICK if "--quick" in sys.argv else FULL
    for module, *args in plan:
        print(f"\n### python -m {module} {' '.join(args)}", flush=True)
        code = subprocess.call([sys.executable, "-m", module, *args])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
