"""The inspection job types: a fan-out of deterministic room analyses, and a report that
joins them.

The pure helpers are called directly; the handlers run through the real runner with inline
dispatch against a migrated SQLite database, as they would in a worker.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.settings import load_settings
from orchestrator.states import JobStatus
from tasks.inspections import (
    DEEP_CHECKS,
    PASS_MARK,
    QUICK_CHECKS,
    AnalyzeInput,
    analyse_room,
    check_score,
)

TENANT = "tnt_inspections"
ROOMS = ["kitchen", "bath_1", "attic", "room_7", "cellar"]


@pytest.fixture
def runtime(sqlite_url: str) -> Iterator[Runtime]:
    settings = load_settings(env="development", database_url=sqlite_url, dispatch_mode="inline")
    runtime = Runtime.build(settings)
    yield runtime
    runtime.database.dispose()


def run_pipeline(
    runtime: Runtime, job_type: str, data: dict[str, Any], subject: str | None = "insp_1"
) -> list[Job]:
    """Create the job (inline dispatch runs the whole pipeline) and read every step back."""
    created = runtime.service.create(
        NewJob(tenant_id=TENANT, type=job_type, input=data, subject=subject)
    )
    return runtime.service.get(TENANT, created.details.job.id).steps


def analyse_and_report(runtime: Runtime, mode: str, rooms: list[str]) -> tuple[Job, Job]:
    steps = run_pipeline(runtime, "ANALYZE_INSPECTION", {"analysisMode": mode, "roomIds": rooms})
    assert [s.type for s in steps] == ["ANALYZE_INSPECTION", "GENERATE_REPORT"]
    analysis, report = steps
    assert analysis.status is JobStatus.SUCCEEDED, analysis.error_message
    assert report.status is JobStatus.SUCCEEDED, report.error_message
    return analysis, report


def rooms_of(runtime: Runtime, report: Job) -> list[dict[str, Any]]:
    """The ANALYZE_ROOM results the report joined, in the inspection's order."""
    with runtime.database.session() as session:
        children = session.scalars(
            sa.select(Job).where(Job.join_id == report.id).order_by(Job.item_index)
        ).all()
    assert {child.type for child in children} <= {"ANALYZE_ROOM"}
    assert {child.status for child in children} <= {JobStatus.SUCCEEDED}
    return [child.result for child in children]


# --- the pure helpers ---------------------------------------------------------------


def test_check_score_is_stable_and_in_range() -> None:
    for room in ROOMS:
        for check in DEEP_CHECKS:
            score = check_score(room, check)
            assert isinstance(score, int)
            assert 0 <= score <= 100
            assert check_score(room, check) == score


def test_check_score_depends_on_room_and_check() -> None:
    scores = {check_score(room, check) for room in ROOMS for check in DEEP_CHECKS}
    # 30 (room, check) pairs do not all collapse onto a handful of values.
    assert len(scores) > 10
    assert len({check_score("kitchen", check) for check in DEEP_CHECKS}) > 1
    assert len({check_score(room, "moisture") for room in ROOMS}) > 1


def test_quick_checks_are_a_subset_of_deep_checks() -> None:
    assert len(QUICK_CHECKS) == 3
    assert len(DEEP_CHECKS) == 6
    assert set(QUICK_CHECKS) < set(DEEP_CHECKS)


@pytest.mark.parametrize("checks", [QUICK_CHECKS, DEEP_CHECKS])
def test_analyse_room_derives_score_and_issues_from_the_checks(checks: tuple[str, ...]) -> None:
    for room in ROOMS:
        analysis = analyse_room(room, checks)
        assert analysis["roomId"] == room
        assert analysis["checks"] == {c: check_score(room, c) for c in checks}
        assert analysis["score"] == pytest.approx(
            statistics.mean(analysis["checks"].values()), abs=0.05
        )
        failing = {c for c, score in analysis["checks"].items() if score < PASS_MARK}
        assert set(analysis["issues"]) == failing
        assert analysis["issues"] == sorted(analysis["issues"])
        assert analyse_room(room, checks) == analysis


def test_some_rooms_have_issues_and_some_checks_pass() -> None:
    """The sample rooms exercise both branches, so the report tests below mean something."""
    analyses = [analyse_room(room, DEEP_CHECKS) for room in ROOMS]
    assert any(a["issues"] for a in analyses)
    assert any(len(a["issues"]) < len(DEEP_CHECKS) for a in analyses)


@pytest.mark.parametrize(
    "data",
    [
        {"analysisMode": "FAST", "roomIds": ["r"]},
        {"analysisMode": "DEEP", "roomIds": []},
        {"analysisMode": "DEEP", "roomIds": [""]},
        {"analysisMode": "DEEP", "roomIds": ["r"] * 501},
        {"analysisMode": "DEEP", "roomIds": ["r"], "extra": True},
        {"roomIds": ["r"]},
    ],
)
def test_analyze_input_rejects_bad_input(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AnalyzeInput.model_validate(data)


# --- the handlers, through the runner -------------------------------------------------


@pytest.mark.parametrize(("mode", "checks"), [("DEEP", DEEP_CHECKS), ("QUICK", QUICK_CHECKS)])
def test_analysis_runs_the_checks_of_its_mode(
    runtime: Runtime, mode: str, checks: tuple[str, ...]
) -> None:
    analysis, report = analyse_and_report(runtime, mode, ROOMS)
    result = analysis.result
    assert result == {"inspectionId": "insp_1", "mode": mode, "roomIds": ROOMS}
    rooms = rooms_of(runtime, report)  # one ANALYZE_ROOM per room, in order
    assert [room["roomId"] for room in rooms] == ROOMS
    assert report.result["roomIds"] == ROOMS
    for room in rooms:
        assert len(room["checks"]) == len(checks)
        assert room == analyse_room(room["roomId"], checks)


def test_quick_and_deep_agree_on_the_checks_they_share(runtime: Runtime) -> None:
    _, deep = analyse_and_report(runtime, "DEEP", ROOMS)
    _, quick = analyse_and_report(runtime, "QUICK", ROOMS)
    pairs = zip(rooms_of(runtime, deep), rooms_of(runtime, quick), strict=True)
    for deep_room, quick_room in pairs:
        shared = {c: deep_room["checks"][c] for c in quick_room["checks"]}
        assert shared == quick_room["checks"]


def test_report_derives_from_the_analysis(runtime: Runtime) -> None:
    _, report = analyse_and_report(runtime, "DEEP", ROOMS)
    rooms = rooms_of(runtime, report)
    body = report.result
    assert body["inspectionId"] == "insp_1"
    assert body["overallScore"] == pytest.approx(
        statistics.mean(room["score"] for room in rooms), abs=0.05
    )
    assert body["verdict"] == ("pass" if body["overallScore"] >= PASS_MARK else "needs attention")
    needing = {room["roomId"] for room in rooms if room["issues"]}
    assert set(body["roomsNeedingAttention"]) == needing
    assert len(body["roomsNeedingAttention"]) == len(needing)
    issues = sum(len(room["issues"]) for room in rooms)
    worst = min(rooms, key=lambda room: (room["score"], room["roomId"]))["roomId"]
    assert body["summary"] == (
        f"Inspection insp_1: {len(rooms)} room(s), overall score {body['overallScore']}, "
        f"{issues} issue(s); lowest-scoring room {worst}."
    )
    # The default (summary) format leaves the per-room detail out.
    assert "rooms" not in body


def test_report_step_is_linked_to_its_analysis(runtime: Runtime) -> None:
    analysis, report = analyse_and_report(runtime, "QUICK", ["r1"])
    assert report.parent_id == analysis.id
    assert report.pipeline_id == analysis.pipeline_id == analysis.id
    assert report.input == {"format": "summary"}


def test_the_same_input_gives_the_same_results(runtime: Runtime) -> None:
    first_analysis, first_report = analyse_and_report(runtime, "DEEP", ROOMS)
    second_analysis, second_report = analyse_and_report(runtime, "DEEP", ROOMS)
    assert first_analysis.id != second_analysis.id
    assert first_analysis.result == second_analysis.result
    assert first_report.result == second_report.result
    assert rooms_of(runtime, first_report) == rooms_of(runtime, second_report)


def test_duplicate_room_ids_are_analysed_once(runtime: Runtime) -> None:
    analysis, report = analyse_and_report(runtime, "DEEP", ["a", "b", "a", "b", "a"])
    assert analysis.result["roomIds"] == ["a", "b"]
    assert [room["roomId"] for room in rooms_of(runtime, report)] == ["a", "b"]
    assert report.result["summary"].startswith("Inspection insp_1: 2 room(s)")


def _handler_progress(runtime: Runtime, job: Job) -> list[float]:
    return [
        event.data["percent"]
        for event in runtime.service.events(TENANT, job.id)
        if event.kind == "progress" and event.data
    ]


def test_progress_says_the_rooms_were_sent(runtime: Runtime) -> None:
    analysis, _ = analyse_and_report(runtime, "QUICK", ["a", "b", "a"])
    assert _handler_progress(runtime, analysis) == [100]
    assert analysis.progress == 1.0 and analysis.progress_message == "2 room(s) sent for analysis"


def test_the_report_runs_once_after_the_last_room(runtime: Runtime) -> None:
    _, report = analyse_and_report(runtime, "QUICK", ROOMS)
    with runtime.database.session() as session:
        last_room = max(session.scalars(sa.select(Job.finished_at).where(Job.join_id == report.id)))
    assert report.started_at is not None and report.started_at >= last_room
    starts = [e for e in runtime.service.events(TENANT, report.id) if e.to_status == "running"]
    assert len(starts) == 1


def test_the_handler_logs_what_it_did(runtime: Runtime) -> None:
    analysis, _ = analyse_and_report(runtime, "DEEP", ["a", "b"])
    logs = [e for e in runtime.service.events(TENANT, analysis.id) if e.kind == "log"]
    assert len(logs) == 1
    assert logs[0].level == "INFO"
    assert logs[0].message == "sent 2 room(s) for DEEP analysis"


def test_an_inspection_without_an_id_still_reports(runtime: Runtime) -> None:
    steps = run_pipeline(
        runtime, "ANALYZE_INSPECTION", {"analysisMode": "QUICK", "roomIds": ["a"]}, subject=None
    )
    report = steps[1]
    assert report.status is JobStatus.SUCCEEDED
    assert report.result["inspectionId"] is None
    assert report.result["summary"].startswith("Inspection (none): 1 room(s)")


def test_a_report_without_an_analysis_fails_at_once(runtime: Runtime) -> None:
    steps = run_pipeline(runtime, "GENERATE_REPORT", {"format": "detailed"})
    assert [s.type for s in steps] == ["GENERATE_REPORT"]
    report = steps[0]
    assert report.status is JobStatus.FAILED
    assert report.attempt == 1  # a PermanentError: no retries
    assert report.error_type == "PermanentError"
    assert "ANALYZE_INSPECTION" in (report.error_message or "")
