"""Workflows: named steps over job types, with dependencies, maps and joins.

    define_workflow(
        "INSPECTION_FLOW",
        input=InspectionInput,
        steps=[
            step("analyze", "ANALYZE_INSPECTION"),
            map_step("rooms", "ANALYZE_ROOM", over="input.roomIds", item="roomId",
                     concurrency=8, after=["analyze"]),
            step("report", "GENERATE_REPORT", after=["rooms"]),
        ],
    )

A workflow runs on the fan-out machinery (`JobContext.spawn` and its joins), so it keeps
their guarantees: its steps are laid out in stages (a step's stage is one past the
latest of its dependencies), and the run is a line of gates, jobs of the workflow's own
type. Gate k spawns stage k's steps as its children, in the same transaction as its
success; gate k+1 is their join, and runs once, after the last of them. So the first gate
is the workflow's head (its id is the workflow's), and the last one's result holds the
final stage's results.

Each step's input is built from the workflow's input (the fields its type declares),
the step's constants, and for a map, the item under `item`. Everything a definition
names is checked when it is defined: step types, dependencies (no cycles), what a map
maps over, and that every field a step's type requires is given.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from orchestrator.context import Spawn
from orchestrator.errors import JobDefinitionError, PermanentError
from orchestrator.registry import (
    ALL_MAY_FAIL,
    DEFAULT_QUEUE,
    NAME_PATTERN,
    JobType,
    Registry,
    registry,
)
from orchestrator.retry import RetryPolicy

if TYPE_CHECKING:
    from orchestrator.context import JobContext

STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,62}$")
GATE_PREFIX = "#"
# Where a map's items come from: the workflow's input, or an earlier step's result.
INPUT_SOURCE = "input"


@dataclass(frozen=True)
class Step:
    """One step of a workflow: a job of `type` once every step in `after` has finished.
    A map (`over` set) is one job per item of a list, `item` the field each gets it in."""

    name: str
    type: str
    after: tuple[str, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    allow_failures: int = 0
    over: str | None = None
    item: str | None = None
    concurrency: int | None = None

    @property
    def is_map(self) -> bool:
        return self.over is not None

    def tolerates(self, failed: int) -> bool:
        return self.allow_failures == ALL_MAY_FAIL or failed <= self.allow_failures


def step(
    name: str,
    type: str,  # noqa: A002 - a job type, as everywhere else
    *,
    after: Iterable[str] = (),
    input: Mapping[str, Any] | None = None,  # noqa: A002
    allow_failures: int | Literal["all"] = 0,
) -> Step:
    """A step that runs one job of `type`; `input` holds constants for its input.
    `allow_failures=1` (or "all") lets the workflow go on when this step failed."""
    return Step(name, type, tuple(after), dict(input or {}), _tolerance(name, allow_failures))


def map_step(
    name: str,
    type: str,  # noqa: A002
    *,
    over: str,
    item: str,
    after: Iterable[str] = (),
    input: Mapping[str, Any] | None = None,  # noqa: A002
    concurrency: int | None = None,
    allow_failures: int | Literal["all"] = 0,
) -> Step:
    """One job of `type` per item of the list at `over` ("input.<field>" for the
    workflow's input, "<step>" or "<step>.<field>" for an earlier step's result), each
    given its item as `item`. At most `concurrency` run at once; `allow_failures` of them
    may fail for good ("all": every one may). With 0, a failure stops the workflow: at
    once, unless another step of the same stage tolerates failures (then once that stage
    has finished)."""
    if concurrency is not None and (
        isinstance(concurrency, bool) or not (isinstance(concurrency, int) and concurrency >= 1)
    ):
        raise JobDefinitionError(f"step {name}: concurrency must be a count from 1")
    return Step(
        name,
        type,
        tuple(after),
        dict(input or {}),
        _tolerance(name, allow_failures),
        over=over,
        item=item,
        concurrency=concurrency,
    )


def _tolerance(name: str, allow_failures: int | Literal["all"]) -> int:
    if allow_failures == "all":
        return ALL_MAY_FAIL
    if isinstance(allow_failures, bool) or not (
        isinstance(allow_failures, int) and allow_failures >= 0
    ):
        raise JobDefinitionError(f'step {name}: allow_failures must be a count from 0, or "all"')
    return allow_failures


@dataclass(frozen=True)
class Workflow:
    """A checked definition, laid out in stages (`stages[k]` is what gate k spawns)."""

    name: str
    input_model: type[BaseModel]
    steps: tuple[Step, ...]
    stages: tuple[tuple[Step, ...], ...]
    # Each step's type's input fields: what of the workflow's input it is given.
    fields: Mapping[str, frozenset[str]]

    @property
    def gates(self) -> int:
        """The gates a run has: one before each stage, and the final join."""
        return len(self.stages) + 1

    def step(self, name: str) -> Step:
        for candidate in self.steps:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def stage_of(self, name: str) -> int:
        """The stage step `name` runs in (gate `stage + 1` joins it)."""
        for index, stage in enumerate(self.stages):
            if any(each.name == name for each in stage):
                return index
        raise KeyError(name)

    def failures_allowed_before(self, gate: int) -> int:
        """What gate `gate` lets its children fail: any number when a step of the stage
        before it tolerates failures (the gate then checks each step's own count),
        otherwise none, so the first failure cancels the rest at once."""
        if gate == 0 or gate > len(self.stages):
            return 0
        tolerant = any(s.allow_failures for s in self.stages[gate - 1])
        return ALL_MAY_FAIL if tolerant else 0


def gate_name(index: int) -> str:
    return f"{GATE_PREFIX}{index}"


def gate_index(step_name: str | None) -> int:
    if not step_name or not step_name.startswith(GATE_PREFIX):
        raise PermanentError(f"{step_name!r} is not a gate of a workflow")
    return int(step_name[len(GATE_PREFIX) :])


# -- definition ------------------------------------------------------------------------


def define_workflow(
    name: str,
    *,
    steps: Sequence[Step] | Any,
    input: type[BaseModel] | None = None,  # noqa: A002
    queue: str = DEFAULT_QUEUE,
    public: bool = True,
    target: Registry | None = None,
) -> Workflow:
    """Declare a workflow: a job type `name` whose jobs run `steps` (a list of `step` and
    `map_step`, or a canvas of `chain`/`group`/`chord`). Its input (`input`, a pydantic
    model) is what `POST /v1/jobs` or `send_job` is given. Every step's type must be
    defined before the workflow; any mistake is a `JobDefinitionError` here. Call it in
    the job module itself (not through a helper of another module): a process offers the
    workflows its job modules define, as it offers their job types."""
    from orchestrator.canvas import as_steps  # noqa: PLC0415 - canvas builds on this module

    into = target or registry
    if not NAME_PATTERN.match(name):
        raise JobDefinitionError(f"workflow name {name!r} must match {NAME_PATTERN.pattern}")
    model = input or _EmptyWorkflowInput
    workflow = _checked(name, model, tuple(as_steps(steps)), into)
    gate = _gate_handler(workflow)
    # The registry offers a process the types its job modules define: the gate belongs
    # to the module that called this, as a handler belongs to the module it is written in.
    gate.__module__ = sys._getframe(1).f_globals.get("__name__", gate.__module__)
    into.add(
        JobType(
            name=name,
            handler=gate,
            input_model=model,
            retry=RetryPolicy(max_attempts=3, initial_delay=1, max_delay=30),
            queue=queue,
            public=public,
            workflow=workflow,
        )
    )
    return workflow


class _EmptyWorkflowInput(BaseModel):
    model_config = {"extra": "forbid"}


def _checked(
    name: str, model: type[BaseModel], steps: tuple[Step, ...], types: Registry
) -> Workflow:
    if not steps:
        raise JobDefinitionError(f"workflow {name}: it has no steps")
    by_name: dict[str, Step] = {}
    for each in steps:
        if not STEP_NAME.match(each.name) or each.name == INPUT_SOURCE:
            raise JobDefinitionError(
                f"workflow {name}: step name {each.name!r} must match {STEP_NAME.pattern}, "
                f"and not be {INPUT_SOURCE!r} (what a map over the workflow's input names)"
            )
        if each.name in by_name:
            raise JobDefinitionError(f"workflow {name}: two steps are named {each.name!r}")
        by_name[each.name] = each
    depth = _depths(name, by_name)
    for each in steps:
        upstream = {n: by_name[n] for n in _ancestors(each.name, by_name)}
        _check_step(name, each, model, types, upstream)
    stages = tuple(
        tuple(s for s in steps if depth[s.name] == level)
        for level in range(max(depth.values()) + 1)
    )
    fields = {s.name: frozenset(types.get(s.type).input_model.model_fields) for s in steps}
    return Workflow(name, model, steps, stages, fields)


def _depths(workflow: str, steps: Mapping[str, Step]) -> dict[str, int]:
    """Each step's stage: 0 without dependencies, else one past its latest dependency."""
    depth: dict[str, int] = {}
    visiting: list[str] = []

    def visit(name: str) -> int:
        if name in depth:
            return depth[name]
        if name in visiting:
            loop = " -> ".join([*visiting[visiting.index(name) :], name])
            raise JobDefinitionError(f"workflow {workflow}: steps depend on each other: {loop}")
        visiting.append(name)
        upstream = []
        for dependency in steps[name].after:
            if dependency not in steps:
                raise JobDefinitionError(
                    f"workflow {workflow}: step {name} comes after {dependency!r}, "
                    "which is not one of its steps"
                )
            upstream.append(visit(dependency))
        visiting.pop()
        depth[name] = 1 + max(upstream) if upstream else 0
        return depth[name]

    for name in steps:
        visit(name)
    return depth


def _ancestors(name: str, steps: Mapping[str, Step]) -> set[str]:
    found: set[str] = set()
    pending = list(steps[name].after)
    while pending:
        current = pending.pop()
        if current not in found:
            found.add(current)
            pending.extend(steps[current].after)
    return found


def _check_step(
    workflow: str,
    each: Step,
    model: type[BaseModel],
    types: Registry,
    upstream: Mapping[str, Step],
) -> None:
    where = f"workflow {workflow}, step {each.name}"
    if each.type not in types:
        raise JobDefinitionError(
            f"{where}: job type {each.type!r} is not defined (define it before the workflow)"
        )
    job_type = types.get(each.type)
    if job_type.then is not None or job_type.workflow is not None:
        raise JobDefinitionError(
            f"{where}: {each.type} is a pipeline or a workflow itself; a step runs one job"
        )
    fields = job_type.input_model.model_fields
    unknown = sorted(set(each.constants) - set(fields))
    if unknown:
        raise JobDefinitionError(f"{where}: {each.type} has no input field {unknown[0]!r}")
    given = set(model.model_fields) & set(fields) | set(each.constants)
    if each.is_map:
        _check_map(where, each, model, fields, upstream)
        if each.item in given:
            raise JobDefinitionError(
                f"{where}: its item field {each.item!r} is also given by the workflow's "
                "input or the step's constants; one of them would be lost"
            )
        given.add(str(each.item))
    missing = sorted(n for n, f in fields.items() if f.is_required() and n not in given)
    if missing:
        raise JobDefinitionError(
            f"{where}: {each.type} requires input {missing[0]!r}, which neither the "
            "workflow's input nor the step's constants give"
        )


def _check_map(
    where: str,
    each: Step,
    model: type[BaseModel],
    fields: Mapping[str, Any],
    upstream: Mapping[str, Step],
) -> None:
    source, _, path = str(each.over).partition(".")
    if source == INPUT_SOURCE:
        if path not in model.model_fields:
            raise JobDefinitionError(
                f"{where}: it maps over {each.over!r}, but the workflow's input has no "
                f"field {path!r}"
            )
    elif source not in upstream:
        raise JobDefinitionError(
            f"{where}: it maps over {each.over!r}, but {source!r} is not a step it comes after"
        )
    elif path and upstream[source].is_map:
        raise JobDefinitionError(
            f"{where}: it maps over {each.over!r}, but {source} is a map: its result is a "
            f"list, so map over {source!r} itself"
        )
    if each.item not in fields:
        raise JobDefinitionError(f"{where}: {each.type} has no input field {each.item!r}")


# -- running ---------------------------------------------------------------------------


def changed_since_run(
    name: str, workflow: Workflow | None, gates: int, steps: Iterable[str] = ()
) -> str | None:
    """Why a run of workflow `name`, made with `gates` gates and whose jobs ran `steps`,
    cannot go on under its definition now (`workflow`; `None`: `name` is a workflow no
    more): it changed since the run was created (a deploy), so its stages are not the ones
    the run's gates were made for. `None` if, as far as these tell, it did not."""
    known = {each.name for each in workflow.steps} if workflow else set()
    if (now := workflow.gates if workflow else 1) != gates:
        what = f"{gates} gates, now {now}"
    elif gone := sorted(set(steps) - known):
        what = f"its step {gone[0]!r} is gone"
    else:
        return None
    return f"workflow {name} changed since this run started ({what}): send it again"


def _gate_handler(workflow: Workflow) -> Any:
    def gate(ctx: JobContext, data: BaseModel) -> dict[str, Any]:
        index = gate_index(ctx.step)
        if changed := changed_since_run(workflow.name, workflow, ctx.gates_in_run()):
            raise PermanentError(changed)
        if index > 0:
            _check_failures(ctx, workflow.stages[index - 1])
        if index == len(workflow.stages):
            return {s.name: ctx.result(s.name) for s in workflow.stages[-1]}
        given = data.model_dump(mode="json")
        spawned = {
            s.name: _spawn_step(ctx, s, given, workflow.fields[s.name])
            for s in workflow.stages[index]
        }
        return {"stage": index, "spawned": spawned}

    gate.__name__ = gate.__qualname__ = f"gate_of_{workflow.name}"
    return gate


def _check_failures(ctx: JobContext, stage: Sequence[Step]) -> None:
    """A gate that let its children fail (a step in the stage tolerates it) checks each
    step against its own allowance: past it, the workflow stops here."""
    if not any(s.allow_failures for s in stage):
        return  # none may fail: a failure would have cancelled this gate already
    for each in stage:
        failed = ctx.failed_count(each.name)
        if not each.tolerates(failed):
            raise PermanentError(
                f"step {each.name}: {failed} job(s) failed, {each.allow_failures} allowed"
            )


def _spawn_step(
    ctx: JobContext, each: Step, given: Mapping[str, Any], wanted: frozenset[str]
) -> int:
    """Spawn the step's jobs (one, or one per item); the count spawned. Those of a map
    past its `concurrency` are held: each one finishing releases the next."""
    base = {k: v for k, v in given.items() if k in wanted} | dict(each.constants)
    if not each.is_map:
        ctx.spawned.append(Spawn(each.type, base, step=each.name))
        return 1
    items = _items(ctx, each, given)
    for position, item in enumerate(items):
        held = each.concurrency is not None and position >= each.concurrency
        spawn = Spawn(each.type, base | {str(each.item): item}, step=each.name, held=held)
        ctx.spawned.append(spawn)
    return len(items)


def _items(ctx: JobContext, each: Step, given: Mapping[str, Any]) -> list[Any]:
    source, _, path = str(each.over).partition(".")
    value: Any = given.get(path) if source == INPUT_SOURCE else ctx.result(source)
    if source != INPUT_SOURCE and path:
        value = value.get(path) if isinstance(value, dict) else None
    if not isinstance(value, list):
        raise PermanentError(f"step {each.name}: {each.over} is not a list")
    return value
