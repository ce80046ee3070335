"""A workflow definition is checked when it is defined: every mistake is a
`JobDefinitionError` naming the workflow, the step and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.canvas import chain, chord, group, job_type, signature
from orchestrator.context import JobContext
from orchestrator.errors import JobDefinitionError
from orchestrator.registry import Registry, define_job
from orchestrator.workflows import define_workflow, map_step, step


class Inspection(BaseModel):
    roomIds: list[str]
    mode: str = "QUICK"


class Room(BaseModel):
    roomId: str
    mode: str


class Nothing(BaseModel):
    pass


def _handler(ctx: JobContext, data: Any) -> None:
    return None


@pytest.fixture
def types() -> Registry:
    types = Registry()
    define_job("ROOM", input=Room, target=types)(_handler)
    define_job("PLAIN", input=Nothing, target=types)(_handler)
    define_job("FIRST", input=Nothing, then="PLAIN", target=types)(_handler)
    return types


def _define(types: Registry, *steps: Any) -> None:
    define_workflow("FLOW", input=Inspection, steps=list(steps), target=types)


def test_a_good_definition_is_laid_out_in_stages(types: Registry) -> None:
    flow = define_workflow(
        "FLOW",
        input=Inspection,
        steps=[
            step("start", "PLAIN"),
            map_step("rooms", "ROOM", over="input.roomIds", item="roomId", after=["start"]),
            step("side", "PLAIN", after=["start"]),
            step("end", "PLAIN", after=["rooms", "side"]),
        ],
        target=types,
    )
    assert [[s.name for s in stage] for stage in flow.stages] == [
        ["start"],
        ["rooms", "side"],
        ["end"],
    ]
    assert types.get("FLOW").workflow is flow
    assert len(types.pipeline_of("FLOW")) == 4  # a gate before each stage, and the last


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "workflow FLOW: it has no steps"),
        ([step("a", "NOPE")], "step a: job type 'NOPE' is not defined"),
        ([step("a", "PLAIN"), step("a", "PLAIN")], "two steps are named 'a'"),
        ([step("a", "PLAIN", after=["b"])], "step a comes after 'b', which is not one of"),
        (
            [step("a", "PLAIN", after=["b"]), step("b", "PLAIN", after=["a"])],
            "steps depend on each other: a -> b -> a",
        ),
        ([step("a", "FIRST")], "FIRST is a pipeline or a workflow itself"),
        ([step("a", "ROOM")], "ROOM requires input 'roomId', which neither"),
        ([step("a", "PLAIN", input={"colour": "red"})], "PLAIN has no input field 'colour'"),
        (
            [map_step("a", "ROOM", over="input.rooms", item="roomId")],
            "it maps over 'input.rooms', but the workflow's input has no field 'rooms'",
        ),
        (
            [
                step("b", "PLAIN"),
                map_step("a", "ROOM", over="b.ids", item="roomId"),
            ],
            "it maps over 'b.ids', but 'b' is not a step it comes after",
        ),
        (
            [map_step("a", "ROOM", over="input.roomIds", item="room")],
            "ROOM has no input field 'room'",
        ),
        ([step("no spaces", "PLAIN")], "step name 'no spaces' must match"),
        ([step("input", "PLAIN")], "and not be 'input'"),
        (
            [map_step("a", "ROOM", over="input.roomIds", item="mode")],
            "its item field 'mode' is also given by the workflow's input",
        ),
        (
            [map_step("a", "ROOM", over="input.roomIds", item="roomId", input={"roomId": "x"})],
            "its item field 'roomId' is also given by the workflow's input or the step's",
        ),
        (
            [
                map_step("a", "ROOM", over="input.roomIds", item="roomId"),
                map_step("b", "ROOM", over="a.ids", item="roomId", after=["a"]),
            ],
            "but a is a map: its result is a list, so map over 'a' itself",
        ),
    ],
)
def test_a_mistake_is_an_error_at_definition(
    types: Registry, steps: list[Any], message: str
) -> None:
    with pytest.raises(JobDefinitionError, match=message.replace("(", r"\(")) as caught:
        _define(types, *steps)
    assert "FLOW" in str(caught.value)
    assert "FLOW" not in types  # nothing half-registered


def test_bad_options_are_errors_too() -> None:
    for concurrency in (0, True):
        with pytest.raises(JobDefinitionError, match="concurrency must be a count from 1"):
            map_step("a", "ROOM", over="input.roomIds", item="roomId", concurrency=concurrency)
    with pytest.raises(JobDefinitionError, match="allow_failures must be a count"):
        step("a", "PLAIN", allow_failures=-1)
    with pytest.raises(JobDefinitionError, match="a list of step"):
        define_workflow("FLOW", steps="PLAIN", target=Registry())


def test_a_canvas_builds_the_same_steps(types: Registry) -> None:
    flow = define_workflow(
        "CANVAS",
        input=Inspection,
        steps=chain(
            signature("PLAIN"),
            group(
                signature("ROOM").map(over="input.roomIds", item="roomId", concurrency=4),
                chain(signature("PLAIN"), signature("PLAIN")),
            ),
            chord([signature("PLAIN")], signature("PLAIN")),
        ),
        target=types,
    )
    assert [(s.name, s.after) for s in flow.steps] == [
        ("PLAIN", ()),
        ("ROOM", ("PLAIN",)),
        ("PLAIN-2", ("PLAIN",)),
        ("PLAIN-3", ("PLAIN-2",)),
        ("PLAIN-4", ("ROOM", "PLAIN-3")),
        ("PLAIN-5", ("PLAIN-4",)),
    ]
    assert flow.step("ROOM").concurrency == 4
    assert [[s.name for s in stage] for stage in flow.stages] == [
        ["PLAIN"],
        ["ROOM", "PLAIN-2"],
        ["PLAIN-3"],
        ["PLAIN-4"],
        ["PLAIN-5"],
    ]


def test_a_job_types_s_is_a_signature_as_celerys_task_s_is(types: Registry) -> None:
    plain, room = job_type("PLAIN"), job_type("ROOM")
    flow = define_workflow(
        "CELERY_SPELLING",
        input=Inspection,
        steps=chain(plain.s(), chord([room.s(roomId="a"), room.s(roomId="b")], plain.s())),
        target=types,
    )
    assert [(s.name, s.type, dict(s.constants)) for s in flow.steps] == [
        ("PLAIN", "PLAIN", {}),
        ("ROOM", "ROOM", {"roomId": "a"}),
        ("ROOM-2", "ROOM", {"roomId": "b"}),
        ("PLAIN-2", "PLAIN", {}),
    ]
