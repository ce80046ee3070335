"""Python's cyclic garbage collector and the heap a long-lived process starts with.

Each process here (a web worker, a Celery worker and its pool processes, the dispatcher)
builds a large heap as it starts: SQLAlchemy's mappers and compiled statements, pydantic's
validators, Celery, Flask, the job modules. It keeps that heap for its life, and the
collector walked all of it at every full collection that requests and jobs set off by
allocating: a batch of a thousand jobs makes tens of thousands of objects, and those walks
were about a quarter of its request's CPU (bench/RESULTS.md). Frozen once the process has
started, that heap is left out of every collection; what requests and jobs make is
collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Leave every object alive now out of later collections (call once started)."""
    gc.freeze()
