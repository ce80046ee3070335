"""Celery-shaped canvases over job types, built into a durable workflow.

    define_workflow(
        "REPORT_FLOW",
        input=ReportFlowInput,
        steps=chain(
            signature("FETCH_LISTING"),
            group(signature("SCORE_PHOTOS"), signature("CHECK_PRICE", currency="EUR")),
            signature("WRITE_SUMMARY"),
        ),
    )

`chain(a, b)` runs b after a; `group(a, b)` runs them side by side; `chord(header, body)`
is `chain(group(*header), body)`: the body runs once, after every job of the header.
`signature(type, **constants)`, or in Celery's spelling `job_type(type).s(**constants)`,
is one job: its keywords are constants of its step's input (the rest comes from the
workflow's input, as for `step`); `signature(...).map(over=..., item=...)` is a map step. Steps are
named after their type ("CHECK_PRICE", then "CHECK_PRICE-2" for a second one), which is
what `JobContext.result` takes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import JobDefinitionError
from orchestrator.workflows import Step, map_step, step

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class Signature:
    """One job of `type` with constant input (Celery's `task.s(...)`)."""

    type: str
    constants: dict[str, Any] = field(default_factory=dict)
    over: str | None = None
    item: str | None = None
    concurrency: int | None = None
    allow_failures: int | Literal["all"] = 0

    def map(
        self,
        *,
        over: str,
        item: str,
        concurrency: int | None = None,
        allow_failures: int | Literal["all"] = 0,
    ) -> Signature:
        """One job per item of the list at `over` (see `map_step`)."""
        return Signature(self.type, self.constants, over, item, concurrency, allow_failures)


@dataclass(frozen=True)
class Chain:
    tasks: tuple[Canvas, ...]


@dataclass(frozen=True)
class Group:
    tasks: tuple[Canvas, ...]


Canvas = Signature | Chain | Group


@dataclass(frozen=True)
class JobTypeRef:
    """A job type by name, for Celery's spelling: `ROOM = job_type("ANALYZE_ROOM")`, then
    `ROOM.s(roomId="kitchen")` as `task.s(...)` would be."""

    name: str

    def s(self, **constants: Any) -> Signature:
        return Signature(self.name, constants)


def job_type(name: str) -> JobTypeRef:
    """The job type `name`, whose `.s(**constants)` is a signature."""
    return JobTypeRef(name)


def signature(type: str, **constants: Any) -> Signature:  # noqa: A002
    """One job of `type` (Celery's `task.s(...)`); `constants` go into its input."""
    return Signature(type, constants)


def chain(*tasks: Canvas) -> Chain:
    """Each task after the one before it has finished (all of it, for a group)."""
    return Chain(tasks)


def group(*tasks: Canvas) -> Group:
    """The tasks side by side; what follows the group waits for every one."""
    return Group(tasks)


def chord(header: Iterable[Canvas], body: Canvas) -> Chain:
    """`body` once, after every task of `header` has finished: `chain(group(*header), body)`."""
    return Chain((Group(tuple(header)), body))


def as_steps(definition: object) -> list[Step]:
    """A workflow's steps: a list of `Step` as given, or a canvas laid out as steps."""
    if isinstance(definition, Signature | Chain | Group):
        steps: list[Step] = []
        _lay(definition, (), steps)
        return steps
    if isinstance(definition, list | tuple) and all(isinstance(s, Step) for s in definition):
        return list(definition)
    raise JobDefinitionError(
        "a workflow's steps are a list of step()/map_step(), or a chain, group or chord"
    )


def _lay(node: Canvas, after: tuple[str, ...], steps: list[Step]) -> tuple[str, ...]:
    """Add `node`'s steps after `after`; the names of its last steps (what follows it
    waits for)."""
    if isinstance(node, Signature):
        name = _name_for(node.type, steps)
        steps.append(_step(name, node, after))
        return (name,)
    if isinstance(node, Chain):
        for task in node.tasks:
            after = _lay(task, after, steps)
        return after
    tails: list[str] = []
    for task in node.tasks:
        tails.extend(_lay(task, after, steps))
    return tuple(tails)


def _step(name: str, node: Signature, after: tuple[str, ...]) -> Step:
    if node.over is None:
        return step(
            name, node.type, after=after, input=node.constants, allow_failures=node.allow_failures
        )
    return map_step(
        name,
        node.type,
        over=node.over,
        item=str(node.item),
        after=after,
        input=node.constants,
        concurrency=node.concurrency,
        allow_failures=node.allow_failures,
    )


def _name_for(job_type: str, steps: list[Step]) -> str:
    base = _NOT_IN_NAME.sub("_", job_type)[:56]
    taken = {s.name for s in steps}
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in range(2, len(steps) + 2) if f"{base}-{n}" not in taken)
