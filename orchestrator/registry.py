"""Job types: declared once in Python, looked up by name everywhere else.

@define_job("ANALYZE_INSPECTION", input=AnalyzeInput, then="GENERATE_REPORT")
def analyze(ctx: JobContext, data: AnalyzeInput) -> dict[str, object]: ...
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.errors import FieldError, InvalidInput, JobDefinitionError, UnknownJobType
from orchestrator.retry import RetryPolicy

if TYPE_CHECKING:
    from orchestrator.context import JobContext
    from orchestrator.workflows import Workflow

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_QUEUE = "default"
DEFAULT_TIME_LIMIT = 300.0
BUILTIN_JOB_MODULES = ("tasks",)

Handler = Callable[["JobContext", Any], Any]
H = TypeVar("H", bound=Handler)


class EmptyInput(BaseModel):
    """The schema of a job type that declares none: an object with no fields."""

    model_config = {"extra": "forbid"}


class AnyInput(BaseModel):
    """Whatever a job of a type this process does not define was given."""

    model_config = {"extra": "allow"}


ALL_MAY_FAIL = -1  # `allow_failures="all"`, as stored on a join's row


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    input_model: type[BaseModel] = EmptyInput
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    then: str | None = None
    time_limit: float = DEFAULT_TIME_LIMIT
    queue: str = DEFAULT_QUEUE
    # False for system jobs (archival, cron firings): the public API cannot create them.
    public: bool = True
    # As a join (the step after a job that spawns children): how many of its children may
    # fail for good and it still run; `ALL_MAY_FAIL` waits for every child whatever its end.
    allow_failures: int = 0
    # A workflow's type (`define_workflow`): its jobs are the run's gates.
    workflow: Workflow | None = None

    def validate_input(self, data: object) -> BaseModel:
        """The input as the handler will see it, or `InvalidInput` with per-field messages."""
        try:
            return self.input_model.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput([_field_error(err) for err in exc.errors()]) from None


def _field_error(err: Any) -> FieldError:
    path = ".".join(str(part) for part in err["loc"])
    return FieldError(field=f"input.{path}" if path else "input", message=err["msg"])


class Registry:
    """Every known job type; each process fills one at start-up.

    A process's registry (`load_job_modules`) also finds, when asked for it by name, a
    type its job modules defined after it was made: a module that defines a type, sends
    a job of it, then defines another (a script, a notebook) can send that one too."""

    def __init__(self, source: Registry | None = None, modules: tuple[str, ...] = ()) -> None:
        self._types: dict[str, JobType] = {}
        self._source = source
        self._modules = modules

    def add(self, job_type: JobType) -> None:
        existing = self._types.get(job_type.name)
        if existing is not None and existing.handler is not job_type.handler:
            raise JobDefinitionError(f"job type {job_type.name!r} is defined twice")
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType:
        found = self._find(name)
        if found is None:
            raise UnknownJobType(name, self.public_names())
        return found

    def resolve(self, name: str) -> JobType:
        """The type, or `undefined_job_type(name)` for one this process does not define."""
        found = self._find(name)
        return found if found is not None else undefined_job_type(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def _find(self, name: str) -> JobType | None:
        found = self._types.get(name)
        if found is None and self._source is not None:
            later = self._source._types.get(name)
            if later is not None and any(_defined_in(later, m) for m in self._modules):
                self._types[name] = found = later
        return found

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def public_names(self) -> list[str]:
        return sorted(job_type.name for job_type in self if job_type.public)

    def pipeline_of(self, name: str) -> list[JobType]:
        """The job type and every type that follows it, in order (a workflow: its gates)."""
        first = self.get(name)
        if first.workflow is not None:
            return [first] * first.workflow.gates
        steps: list[JobType] = []
        current: str | None = name
        while current is not None:
            job_type = self.get(current)
            if job_type in steps:
                raise JobDefinitionError(f"pipeline starting at {name!r} loops back")
            steps.append(job_type)
            current = job_type.then
        return steps

    def check(self) -> None:
        """Fail loudly on a pipeline naming an unknown type or a step without input defaults.

        Delays need no check against the broker's visibility timeout: long ones wait in the
        database, and a run that outlasts it is redelivered and skipped as a duplicate.
        """
        for job_type in self:
            if job_type.then is not None and job_type.then not in self:
                raise JobDefinitionError(
                    f"{job_type.name}: then={job_type.then!r} is not a known job type"
                )
            if job_type.workflow is None:
                for later in self.pipeline_of(job_type.name)[1:]:
                    _require_defaults(later)


def _require_defaults(job_type: JobType) -> None:
    """A step that follows another is created with its input's defaults: they must exist."""
    try:
        job_type.validate_input({})
    except InvalidInput as exc:
        raise JobDefinitionError(
            f"{job_type.name} follows another step, so its input needs defaults for: {exc}"
        ) from None


def undefined_job_type(name: str) -> JobType:
    """What a runner uses for a job it claimed whose type this process does not define (a
    deploy under way, or ORCH_JOB_MODULES that differ between processes): each run fails
    as a handler's error does, so the job is retried with backoff, in case another worker
    knows the type, and fails for good, saying why, once its attempts are spent."""

    def undefined(ctx: JobContext, data: AnyInput) -> None:
        raise UnknownJobType(name)

    return JobType(name=name, handler=undefined, input_model=AnyInput, public=False)


# The registry `define_job` writes to; processes read it after `load_job_modules`.
registry = Registry()


def define_job(
    name: str,
    *,
    input: type[BaseModel] = EmptyInput,  # noqa: A002 - the natural word for a job's input
    retry: RetryPolicy | None = None,
    then: str | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    queue: str = DEFAULT_QUEUE,
    public: bool = True,
    allow_failures: int | Literal["all"] = 0,
    target: Registry | None = None,
) -> Callable[[H], H]:
    """Declare a job type; the decorated function is its handler.

    Options are keyword-only, so a misspelt one is a `TypeError` at import time rather than
    a silently ignored setting. `allow_failures` is for a join (the step after a job that
    spawns children): 0, the default, cancels it at its first child's failure; N lets it
    run with up to N children failed; "all" waits for every child, failed or not.
    """
    if not NAME_PATTERN.match(name):
        raise JobDefinitionError(f"job type name {name!r} must match {NAME_PATTERN.pattern}")
    if not (isinstance(input, type) and issubclass(input, BaseModel)):
        raise JobDefinitionError(f"{name}: input must be a pydantic model class")
    if not (time_limit > 0 and math.isfinite(time_limit)):
        raise JobDefinitionError(f"{name}: time_limit must be positive")
    if allow_failures != "all" and not (isinstance(allow_failures, int) and allow_failures >= 0):
        raise JobDefinitionError(f'{name}: allow_failures must be a count from 0, or "all"')
    tolerated = ALL_MAY_FAIL if allow_failures == "all" else int(allow_failures)

    def register(handler: H) -> H:
        job_type = JobType(
            name=name,
            handler=handler,
            input_model=input,
            retry=retry or RetryPolicy(),
            then=then,
            time_limit=float(time_limit),
            queue=queue,
            public=public,
            allow_failures=tolerated,
        )
        (target or registry).add(job_type)
        return handler

    return register


def load_job_modules(extra: tuple[str, ...] = ()) -> Registry:
    """Import the built-in job modules and the user's (`ORCH_JOB_MODULES`), then check.

    The current folder is importable, as it is for `celery -A`, so `myapp.jobs` is found
    from the project's root whichever command starts the process.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    modules = (*BUILTIN_JOB_MODULES, *extra)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise JobDefinitionError(f"cannot import job module {module!r}: {exc}") from exc
    # Only the types these modules define: a process offers what its settings name, even
    # when other modules that define job types were imported into it too.
    offered = Registry(source=registry, modules=modules)
    for job_type in registry:
        if any(_defined_in(job_type, module) for module in modules):
            offered.add(job_type)
    offered.check()
    return offered


def _defined_in(job_type: JobType, module: str) -> bool:
    home = getattr(job_type.handler, "__module__", "") or ""
    return home == module or home.startswith(f"{module}.")
