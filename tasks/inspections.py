"""Property inspections: analyse the rooms of an inspection in parallel, then write its
report, once, after the last room.

ANALYZE_INSPECTION fans out: one ANALYZE_ROOM child per room (`JobContext.spawn`), each
scoring its room from a deterministic set of checks (DEEP runs more of them).
GENERATE_REPORT, the step after it, joins them: it runs once every room is analysed and
assembles the report from their results. Same input, same output, on any machine.

INSPECTION_REVIEW declares the same work as a workflow (`define_workflow`): a map over the
rooms with at most eight at once, then the report.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from orchestrator import (
    JobContext,
    PermanentError,
    RetryPolicy,
    define_job,
    define_workflow,
    map_step,
    step,
)

QUICK_CHECKS = ("moisture", "electrical", "structure")
DEEP_CHECKS = (*QUICK_CHECKS, "ventilation", "insulation", "fire_safety")
PASS_MARK = 60

RoomId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AnalyzeInput(BaseModel):
    model_config = {"extra": "forbid"}

    analysisMode: Literal["QUICK", "DEEP"]  # noqa: N815 - the API's field name
    roomIds: list[RoomId] = Field(min_length=1, max_length=500)  # noqa: N815


class ReportInput(BaseModel):
    model_config = {"extra": "forbid"}

    format: Literal["summary", "detailed"] = "summary"


def check_score(room_id: str, check: str) -> int:
    """A stable 0-100 score for one check of one room."""
    digest = hashlib.sha256(f"{room_id}:{check}".encode()).digest()
    return digest[0] * 100 // 255


def analyse_room(room_id: str, checks: tuple[str, ...]) -> dict[str, Any]:
    scores = {check: check_score(room_id, check) for check in checks}
    failing = sorted(check for check, score in scores.items() if score < PASS_MARK)
    return {
        "roomId": room_id,
        "score": round(sum(scores.values()) / len(scores), 1),
        "checks": scores,
        "issues": failing,
    }


class RoomInput(BaseModel):
    model_config = {"extra": "forbid"}

    roomId: RoomId  # noqa: N815 - the API's field name
    analysisMode: Literal["QUICK", "DEEP"]  # noqa: N815


@define_job(
    "ANALYZE_INSPECTION",
    input=AnalyzeInput,
    retry=RetryPolicy(max_attempts=5, backoff="exponential", initial_delay=2, max_delay=120),
    then="GENERATE_REPORT",
    time_limit=600,
)
def analyze_inspection(ctx: JobContext, data: AnalyzeInput) -> dict[str, Any]:
    """One ANALYZE_ROOM per room, run in parallel; GENERATE_REPORT joins them."""
    room_ids = list(dict.fromkeys(data.roomIds))  # each room once, in the order given
    for room_id in room_ids:
        ctx.spawn("ANALYZE_ROOM", {"roomId": room_id, "analysisMode": data.analysisMode})
    ctx.progress(1.0, f"{len(room_ids)} room(s) sent for analysis")
    ctx.logger.info("sent %d room(s) for %s analysis", len(room_ids), data.analysisMode)
    return {"inspectionId": ctx.subject, "mode": data.analysisMode, "roomIds": room_ids}


@define_job(
    "ANALYZE_ROOM",
    input=RoomInput,
    retry=RetryPolicy(max_attempts=5, backoff="exponential", initial_delay=2, max_delay=120),
    time_limit=300,
    public=False,  # spawned by ANALYZE_INSPECTION, not created over the API
)
def analyze_room(ctx: JobContext, data: RoomInput) -> dict[str, Any]:
    checks = DEEP_CHECKS if data.analysisMode == "DEEP" else QUICK_CHECKS
    return analyse_room(data.roomId, checks)


@define_job(
    "GENERATE_REPORT",
    input=ReportInput,
    retry=RetryPolicy(max_attempts=3, backoff="exponential", initial_delay=2, max_delay=60),
    time_limit=300,
    queue="reports",  # a worker of its own may take reports (the Procfile's `reports`)
)
def generate_report(ctx: JobContext, data: ReportInput) -> dict[str, Any]:
    analysis = ctx.upstream_result
    if not isinstance(analysis, dict):
        raise PermanentError("GENERATE_REPORT needs the result of ANALYZE_INSPECTION")
    analysed = _analysed_rooms(ctx, analysis)
    if not analysed:
        raise PermanentError("GENERATE_REPORT found no analysed room")
    rooms = sorted(analysed, key=lambda room: (room["score"], room["roomId"]))
    ctx.progress(0.5, "assembling report")
    overall = round(sum(room["score"] for room in rooms) / len(rooms), 1)
    report: dict[str, Any] = {
        "inspectionId": analysis.get("inspectionId", ctx.subject),
        "overallScore": overall,
        "verdict": "pass" if overall >= PASS_MARK else "needs attention",
        "roomIds": [room["roomId"] for room in analysed],
        "roomsNeedingAttention": [room["roomId"] for room in rooms if room["issues"]],
        "summary": _summary_line(analysis.get("inspectionId"), overall, rooms),
    }
    if data.format == "detailed":
        report["rooms"] = rooms
    return report


def _analysed_rooms(ctx: JobContext, analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The rooms' analyses, in the inspection's order: the "rooms" step's in the
    INSPECTION_REVIEW workflow; else the children ANALYZE_INSPECTION spawned (or, for an
    inspection analysed before the fan-out, the rooms in its own result)."""
    if ctx.step is not None:
        return [room for room in ctx.result("rooms") if room is not None]
    return ctx.children_results() or analysis.get("rooms") or []


def _summary_line(inspection: str | None, overall: float, rooms: list[dict[str, Any]]) -> str:
    issues = sum(len(room["issues"]) for room in rooms)
    worst = rooms[0]["roomId"]
    return (
        f"Inspection {inspection or '(none)'}: {len(rooms)} room(s), overall score "
        f"{overall}, {issues} issue(s); lowest-scoring room {worst}."
    )


# The same analysis as a declared workflow: a map over the rooms, eight at a time, then
# the report, once, after the last room.
define_workflow(
    "INSPECTION_REVIEW",
    input=AnalyzeInput,
    steps=[
        map_step("rooms", "ANALYZE_ROOM", over="input.roomIds", item="roomId", concurrency=8),
        step("report", "GENERATE_REPORT", after=["rooms"]),
    ],
)
