"""The job state vocabulary: terminal and claimable sets, the transition graph."""

from __future__ import annotations

import pytest

from orchestrator.states import ALLOWED, CLAIMABLE, TERMINAL, JobStatus, sources_of
from orchestrator.transitions import CLAIM_SOURCES

S = JobStatus
# Jobs come into being in these states (the first pipeline step, and the ones after it).
INITIAL = frozenset({S.QUEUED, S.WAITING})


def _reachable(start: JobStatus) -> set[JobStatus]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_seven_states_of_the_design() -> None:
    assert {s.value for s in JobStatus} == {
        "queued",
        "running",
        "retrying",
        "waiting",
        "succeeded",
        "failed",
        "cancelled",
    }
    assert JobStatus("queued") is S.QUEUED
    assert S.SUCCEEDED == "succeeded"


def test_terminal_set() -> None:
    assert frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}) == TERMINAL
    for status in JobStatus:
        assert status.is_terminal == (status in TERMINAL)


def test_claimable_set() -> None:
    assert frozenset({S.QUEUED, S.RETRYING}) == CLAIMABLE
    assert not CLAIMABLE & TERMINAL
    assert S.WAITING not in CLAIMABLE
    assert S.RUNNING not in CLAIMABLE


def test_every_state_has_an_entry_and_every_target_is_a_status() -> None:
    assert set(ALLOWED) == set(JobStatus)
    for source, targets in ALLOWED.items():
        assert isinstance(source, JobStatus)
        assert isinstance(targets, frozenset)
        for target in targets:
            assert isinstance(target, JobStatus)


def test_no_self_transitions() -> None:
    for source, targets in ALLOWED.items():
        assert source not in targets


def test_nothing_leaves_succeeded() -> None:
    assert ALLOWED[S.SUCCEEDED] == frozenset()
    assert _reachable(S.SUCCEEDED) == {S.SUCCEEDED}


@pytest.mark.parametrize("status", [S.FAILED, S.CANCELLED])
def test_failed_and_cancelled_leave_only_by_a_manual_retry(status: JobStatus) -> None:
    """A retry puts the job back where it started: queued (or waiting on its upstream)."""
    assert S.QUEUED in ALLOWED[status]
    assert ALLOWED[status] <= INITIAL


def test_running_is_entered_only_by_claiming() -> None:
    assert sources_of(S.RUNNING) == CLAIMABLE


def test_terminal_states_are_entered_only_from_active_states() -> None:
    for terminal in TERMINAL:
        assert not sources_of(terminal) & TERMINAL


def test_every_live_job_can_still_finish() -> None:
    for status in JobStatus:
        if not status.is_terminal:
            assert _reachable(status) & TERMINAL, status


def test_every_state_is_reachable_from_creation() -> None:
    reachable = set().union(*(_reachable(s) for s in INITIAL))
    assert reachable == set(JobStatus)


def test_waiting_is_re_entered_only_by_a_retry_of_what_did_not_succeed() -> None:
    # A cancelled pipeline step; a workflow's failed gate or held map job.
    assert sources_of(S.WAITING) == {S.CANCELLED, S.FAILED}


@pytest.mark.parametrize("target", list(JobStatus))
def test_sources_of_agrees_with_allowed(target: JobStatus) -> None:
    expected = {source for source in JobStatus if target in ALLOWED[source]}
    assert sources_of(target) == expected


def test_sources_of_examples() -> None:
    assert sources_of(S.QUEUED) == {S.WAITING, S.FAILED, S.CANCELLED}
    assert sources_of(S.FAILED) == {S.RUNNING}
    assert sources_of(S.RETRYING) == {S.RUNNING}
    assert sources_of(S.SUCCEEDED) == {S.RUNNING}
    assert sources_of(S.CANCELLED) == {S.WAITING, S.QUEUED, S.RETRYING, S.RUNNING}


def test_a_claim_tries_every_claimable_state() -> None:
    assert set(CLAIM_SOURCES) == CLAIMABLE and len(CLAIM_SOURCES) == len(CLAIMABLE)
