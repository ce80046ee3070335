"""What a handler receives besides its input: who it is running for, and ways to report."""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from orchestrator import job_events, transitions
from orchestrator.db import Database
from orchestrator.errors import JobCancelled
from orchestrator.models import Job
from orchestrator.settings import Settings
from orchestrator.states import LOST, Attempt

if TYPE_CHECKING:
    from orchestrator.registry import Registry
    from orchestrator.workflows import Workflow

logger = logging.getLogger("orchestrator.job")
T = TypeVar("T")


class _StepOutcomes(NamedTuple):
    is_map: bool
    rows: Sequence[Any]


@dataclass(frozen=True)
class Spawn:
    """A child job a handler asked for (`JobContext.spawn`)."""

    type: str
    input: dict[str, Any]
    # A workflow's gate spawning a step: its name, and whether it waits for a sibling to
    # finish first (a map past its concurrency).
    step: str | None = None
    held: bool = False


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Logs to the process log with the job's ids and into the job's own events."""

    def __init__(self, sink: Callable[[str, str], None], extra: dict[str, Any]) -> None:
        super().__init__(logger, extra)
        self._sink = sink

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), "action": "handler_log", **kwargs.get("extra", {})}
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().log(level, msg, *args, **kwargs)
        if level >= logging.INFO or self.isEnabledFor(level):
            self._sink(logging.getLevelName(level), str(msg) % args if args else str(msg))


@dataclass
class JobContext:
    """Passed to every handler. `upstream_result` is the previous pipeline step's result."""

    job_id: str
    tenant_id: str
    type: str
    attempt: int
    max_attempts: int
    subject: str | None
    upstream_result: Any
    _database: Database = field(repr=False)
    _clock: Callable[[], datetime] = field(repr=False)
    _settings: Settings | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    # In a workflow run: the step this job runs, and where its definition is found.
    step: str | None = None
    _registry: Registry | None = field(default=None, repr=False)
    _workflow: tuple[str, Workflow] | None = field(default=None, init=False, repr=False)
    logger: JobLogger = field(init=False, repr=False)
    # What `spawn` asked for: recorded with this attempt's success, or not at all.
    spawned: list[Spawn] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        extra = {
            "job_id": self.job_id,
            "tenant_id": self.tenant_id,
            "job_type": self.type,
            "attempt": self.attempt,
        }
        self.logger = JobLogger(self._write_log, extra)

    @property
    def _run(self) -> Attempt:
        return Attempt(self.job_id, self.tenant_id, self.attempt)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress as a fraction from 0 to 1, with an optional message."""
        if not 0 <= fraction <= 1:
            raise ValueError("progress is a fraction between 0 and 1")
        with self._database.transaction() as session:
            transitions.report_progress(session, self._run, fraction, message, self._clock())

    @property
    def database(self) -> Database:
        """The orchestrator's own database, for system jobs (archival, summaries)."""
        return self._database

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise RuntimeError("this context was built without settings")
        return self._settings

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or this attempt superseded): stop soon."""
        return self._stop.is_set()

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if the job should stop; call it between units of work."""
        if self._stop.is_set():
            raise JobCancelled(self.job_id)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise `JobCancelled` as soon as the job is cancelled."""
        if self._stop.wait(seconds):
            raise JobCancelled(self.job_id)

    def spawn(self, type: str, input: dict[str, Any] | None = None) -> None:  # noqa: A002
        """Create a child job of `type` when this run succeeds, in the same transaction as
        its result (a failed or superseded attempt spawns nothing). The step after this
        job in its pipeline then waits for every child: it is their join, and runs once,
        after the last of them succeeded (`children_results` gives their results there).
        One failing for good cancels the join. The child's type, and its input, are checked
        when the run succeeds: an unknown type or an invalid input fails this job."""
        self.spawned.append(Spawn(type, dict(input or {})))

    def children_results(self) -> list[Any]:
        """In a join: the results of the children its upstream step spawned, in the order
        they were spawned (`None` for one that failed, when the join allows failures)."""
        return [child["result"] for child in self.children()]

    def children(self) -> list[dict[str, Any]]:
        """In a join: each child, in spawn order, as `{"id", "status", "result", "error"}`
        (`error` the last error's type and message, for one that failed)."""
        with self._database.session() as session:
            rows = session.execute(
                sa.select(Job.id, Job.status, Job.result, Job.error_type, Job.error_message)
                .where(Job.join_id == self.job_id, Job.tenant_id == self.tenant_id)
                .order_by(Job.item_index)
            ).all()
        return [
            {
                "id": row.id,
                "status": str(row.status),
                "result": row.result,
                "error": None
                if row.error_type is None
                else f"{row.error_type}: {row.error_message}",
            }
            for row in rows
        ]

    @overload
    def result(self, step: str) -> Any: ...

    @overload
    def result(self, step: str, as_: builtins.type[T]) -> T: ...

    def result(self, step: str, as_: builtins.type[Any] | None = None) -> Any:
        """In a workflow: the result of its step `step` (for a map, the list of its jobs'
        results in item order, `None` for one that failed). `as_` (a pydantic model, or
        any type such as `list[Model]`) validates it into that type."""
        outcomes = self._step_outcomes(step)
        found = [row.result for row in outcomes.rows]
        value = found if outcomes.is_map else (found[0] if found else None)
        return value if as_ is None else TypeAdapter(as_).validate_python(value)

    def failed_count(self, step: str) -> int:
        """In a workflow: how many of step `step`'s jobs failed for good or were cancelled."""
        return sum(row.status in LOST for row in self._step_outcomes(step).rows)

    def gates_in_run(self) -> int:
        """In a workflow: how many gates its run was created with."""
        with self._database.session() as session:
            run, _ = self._workflow_run(session)
            count = sa.select(sa.func.count()).where(
                Job.pipeline_id == run, Job.tenant_id == self.tenant_id
            )
            return session.scalar(count) or 0

    def _step_outcomes(self, step: str) -> _StepOutcomes:
        """The step's jobs in item order: the children of the gate that joins its stage,
        read by that gate's id (the index of a join's children, in item order)."""
        with self._database.session() as session:
            run, workflow = self._workflow_run(session)
            try:
                stage = workflow.stage_of(step)
            except KeyError:
                raise ValueError(f"workflow {workflow.name} has no step {step!r}") from None
            join = session.scalar(
                sa.select(Job.id).where(
                    Job.pipeline_id == run,
                    Job.step_index == stage + 1,
                    Job.tenant_id == self.tenant_id,
                )
            )
            rows = session.execute(
                sa.select(Job.result, Job.status)
                .where(Job.join_id == join, Job.step == step, Job.tenant_id == self.tenant_id)
                .order_by(Job.item_index)
            ).all()
        return _StepOutcomes(workflow.step(step).is_map, rows)

    def _workflow_run(self, session: Session) -> tuple[str, Workflow]:
        """The run and its definition, looked up once per attempt: a gate asks for them
        for each step it checks or maps over."""
        if self._workflow is None:
            run, workflow_type = workflow_run_of(session, self.job_id, self.tenant_id)
            workflow = self._registry.resolve(workflow_type).workflow if self._registry else None
            if workflow is None:
                raise RuntimeError(f"job {self.job_id} does not run in a workflow")
            self._workflow = (run, workflow)
        return self._workflow

    def _write_log(self, level: str, message: str) -> None:
        with self._database.transaction() as session:
            job_events.log(session, self._run, level, message[:4000], self._clock())


def workflow_run_of(session: Session, job_id: str, tenant_id: str) -> tuple[str, str]:
    """The workflow run a job belongs to (its first gate's id) and the type that names
    the workflow: a gate's own pipeline, or for a step's job, its gate's (the job that
    spawned it)."""
    columns = (Job.pipeline_id, Job.type, Job.parent_id, Job.join_id)
    mine = sa.select(*columns).where(Job.id == job_id, Job.tenant_id == tenant_id)
    row = session.execute(mine).one()
    if row.join_id is not None and row.parent_id is not None:
        gate = sa.select(*columns).where(Job.id == row.parent_id, Job.tenant_id == tenant_id)
        row = session.execute(gate).one()
    return row.pipeline_id, row.type
