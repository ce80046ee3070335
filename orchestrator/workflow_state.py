"""A workflow run as its steps stand: what `GET /v1/jobs/{id}` shows and the dashboard
draws. One grouped count over the jobs its gates spawned, whatever the run's size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.models import Job
from orchestrator.states import JobStatus
from orchestrator.workflows import Step, Workflow


@dataclass(frozen=True)
class StepState:
    step: Step
    stage: int
    # The gate that joins this step's jobs (page them with its children, by step).
    join_id: str | None
    jobs: dict[str, int] = field(default_factory=dict)  # how many in each status
    job_id: str | None = None  # a single step's job, once spawned


@dataclass(frozen=True)
class WorkflowState:
    name: str
    status: str
    steps: list[StepState]

    @property
    def stages(self) -> list[list[StepState]]:
        """The steps by stage: those of a stage run side by side, after the stage before."""
        stages: list[list[StepState]] = []
        for each in self.steps:
            if each.stage == len(stages):
                stages.append([])
            stages[-1].append(each)
        return stages


def workflow_state(
    session: Session | None, workflow: Workflow, gates: Sequence[Job], tenant_id: str
) -> WorkflowState:
    """`gates`: the run's gates in order (its pipeline's rows). Without a session: a run
    just created, none of whose steps has a job yet."""
    counts: dict[str, dict[str, int]] = {}
    single: dict[str, str] = {}
    rows: Sequence[Any] = []
    if session is not None:
        rows = session.execute(
            sa.select(Job.step, Job.status, sa.func.count(), sa.func.min(Job.id))
            .where(Job.join_id.in_([g.id for g in gates]), Job.tenant_id == tenant_id)
            .group_by(Job.step, Job.status)
        ).all()
    for step_name, status, count, some_id in rows:
        counts.setdefault(str(step_name), {})[JobStatus(status).value] = count
        single[str(step_name)] = some_id
    steps = []
    for index, stage in enumerate(workflow.stages):
        join = gates[index + 1].id if index + 1 < len(gates) else None
        for each in stage:
            job_id = None if each.is_map else single.get(each.name)
            steps.append(StepState(each, index, join, counts.get(each.name, {}), job_id))
    return WorkflowState(workflow.name, _status(gates, steps), steps)


def _status(gates: Sequence[Job], steps: Sequence[StepState]) -> str:
    """The run's status: succeeded once its last gate has; failed once a gate failed, or
    a gate was cancelled by a step's failures past what it tolerates; cancelled once a
    gate was cancelled otherwise (by request); else running once anything started."""
    ends = {gate.status for gate in gates}
    if gates[-1].status is JobStatus.SUCCEEDED:
        return JobStatus.SUCCEEDED.value
    if JobStatus.FAILED in ends:
        return JobStatus.FAILED.value
    if JobStatus.CANCELLED in ends:
        failed = any(not s.step.tolerates(s.jobs.get(JobStatus.FAILED.value, 0)) for s in steps)
        return (JobStatus.FAILED if failed else JobStatus.CANCELLED).value
    if gates[0].status is JobStatus.QUEUED and not any(s.jobs for s in steps):
        return JobStatus.QUEUED.value
    return JobStatus.RUNNING.value


class JobStanding(NamedTuple):
    status: JobStatus
    result: Any
    finished_at: datetime | None


def standing(job: Job, steps: Sequence[Job], workflow: WorkflowState | None) -> JobStanding:
    """How the job stands; a workflow's first gate stands for the run (its id is the
    workflow's): the run's status, its last gate's result once it succeeded, and when it
    finished."""
    if workflow is None or job.step_index != 0:
        return JobStanding(job.status, job.result, job.finished_at)
    status, last = JobStatus(workflow.status), steps[-1]
    return JobStanding(
        status,
        last.result if status is JobStatus.SUCCEEDED else None,
        last.finished_at if status.is_terminal else None,
    )
