"""The job-type registry: definition-time checks, pipelines, input validation, loading."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from orchestrator.errors import InvalidInput, JobDefinitionError, OrchestratorError, UnknownJobType
from orchestrator.registry import EmptyInput, Registry, define_job, load_job_modules
from orchestrator.registry import registry as global_registry
from orchestrator.retry import RetryPolicy


class Rooms(BaseModel):
    model_config = {"extra": "forbid"}

    mode: str
    rooms: list[str] = Field(min_length=1)
    depth: int = 1


class Defaults(BaseModel):
    format: str = "summary"


class Required(BaseModel):
    needed: str


def handler(ctx: Any, data: Any) -> None:
    return None


def other_handler(ctx: Any, data: Any) -> None:
    return None


def define(reg: Registry, name: str, **options: Any) -> None:
    """Define `name` in `reg` with a fresh handler, so each call is a distinct type."""

    def fresh(ctx: Any, data: Any) -> None:
        return None

    define_job(name, target=reg, **options)(fresh)


@pytest.fixture
def reg() -> Registry:
    return Registry()


def test_define_job_registers_into_the_target_only(reg: Registry) -> None:
    returned = define_job("UNIT_ONLY_HERE", input=Rooms, target=reg)(handler)
    assert returned is handler
    assert "UNIT_ONLY_HERE" in reg
    assert "UNIT_ONLY_HERE" not in global_registry
    job_type = reg.get("UNIT_ONLY_HERE")
    assert job_type.handler is handler
    assert job_type.input_model is Rooms


def test_options_are_kept(reg: Registry) -> None:
    policy = RetryPolicy(max_attempts=7, backoff="linear", initial_delay=2, max_delay=9)
    define_job("OPTS", retry=policy, then=None, time_limit=12, queue="slow", target=reg)(handler)
    job_type = reg.get("OPTS")
    assert job_type.retry == policy
    assert job_type.time_limit == 12.0
    assert job_type.queue == "slow"


def test_defaults_empty_input_and_a_valid_retry_policy(reg: Registry) -> None:
    define_job("PLAIN", target=reg)(handler)
    job_type = reg.get("PLAIN")
    assert job_type.input_model is EmptyInput
    assert isinstance(job_type.retry, RetryPolicy)
    assert job_type.time_limit > 0
    assert job_type.then is None


@pytest.mark.parametrize(
    "name",
    ["", "1STARTS_WITH_DIGIT", "_UNDERSCORE", "has space", "semi;colon", "slash/name", "X" * 129],
)
def test_bad_names_are_rejected(reg: Registry, name: str) -> None:
    with pytest.raises(JobDefinitionError):
        define_job(name, target=reg)
    assert name not in reg


@pytest.mark.parametrize("name", ["A", "ANALYZE_INSPECTION", "report.v2", "lesson-gen", "X" * 128])
def test_good_names_are_accepted(reg: Registry, name: str) -> None:
    define_job(name, target=reg)(handler)
    assert name in reg


@pytest.mark.parametrize("bad_input", [dict, str, {"a": 1}, Rooms(mode="m", rooms=["r"]), None])
def test_input_must_be_a_pydantic_model_class(reg: Registry, bad_input: Any) -> None:
    with pytest.raises(JobDefinitionError, match="pydantic"):
        define_job("BAD_INPUT", input=bad_input, target=reg)


@pytest.mark.parametrize("time_limit", [0, -1, -0.5])
def test_non_positive_time_limit_is_rejected(reg: Registry, time_limit: float) -> None:
    with pytest.raises(JobDefinitionError, match="time_limit"):
        define_job("BAD_LIMIT", time_limit=time_limit, target=reg)


def test_nan_time_limit_is_rejected(reg: Registry) -> None:
    with pytest.raises(JobDefinitionError):
        define_job("NAN_LIMIT", time_limit=math.nan, target=reg)


@pytest.mark.parametrize("misspelt", ["time_limt", "retries", "inputs", "next", "max_attempts"])
def test_a_misspelt_option_is_a_type_error(reg: Registry, misspelt: str) -> None:
    with pytest.raises(TypeError, match=misspelt):
        define_job("TYPO", target=reg, **{misspelt: 1})  # type: ignore[arg-type]


def test_options_are_keyword_only(reg: Registry) -> None:
    with pytest.raises(TypeError):
        define_job("POSITIONAL", Rooms)  # type: ignore[misc]


def test_defining_a_name_twice_with_different_handlers_fails(reg: Registry) -> None:
    define_job("TWICE", target=reg)(handler)
    with pytest.raises(JobDefinitionError, match="TWICE"):
        define_job("TWICE", target=reg)(other_handler)
    assert reg.get("TWICE").handler is handler


def test_re_registering_the_same_handler_is_harmless(reg: Registry) -> None:
    """A module imported twice (e.g. as `__main__` and by name) must not break start-up."""
    define_job("AGAIN", target=reg)(handler)
    define_job("AGAIN", target=reg)(handler)
    assert [t.name for t in reg] == ["AGAIN"]


def test_unknown_type_lookup(reg: Registry) -> None:
    with pytest.raises(UnknownJobType) as info:
        reg.get("NOPE")
    assert info.value.name == "NOPE"
    assert "NOPE" not in reg
    assert 42 not in reg


def test_an_unknown_type_names_the_closest_and_lists_the_public_ones(reg: Registry) -> None:
    define(reg, "SEND_INVOICE")
    define(reg, "RESIZE_IMAGE")
    define_job("INTERNAL_SWEEP", public=False, target=reg)(handler)
    with pytest.raises(UnknownJobType) as info:
        reg.get("SEND_INVOCE")
    message = str(info.value)
    assert message == (
        "unknown job type 'SEND_INVOCE'; did you mean 'SEND_INVOICE'? "
        "known types: RESIZE_IMAGE, SEND_INVOICE"
    )
    with pytest.raises(UnknownJobType) as system:
        reg.get("INTERNAL_SWEEPS")
    assert "did you mean" not in str(system.value)
    assert "INTERNAL_SWEEP" not in str(system.value).replace("'INTERNAL_SWEEPS'", "")


def test_the_list_of_known_types_is_bounded() -> None:
    many = [f"TYPE_{n:03}" for n in range(UnknownJobType.LISTED + 5)]
    message = str(UnknownJobType("ZZZ", many))
    assert "did you mean" not in message
    assert message.endswith(f"TYPE_{UnknownJobType.LISTED - 1:03} and 5 more")
    assert str(UnknownJobType("ZZZ")) == "unknown job type 'ZZZ'"


def test_pipeline_of_follows_then_in_order(reg: Registry) -> None:
    define(reg, "C", input=Defaults)
    define(reg, "A", then="B")
    define(reg, "B", then="C", input=Defaults)
    assert [t.name for t in reg.pipeline_of("A")] == ["A", "B", "C"]
    assert [t.name for t in reg.pipeline_of("B")] == ["B", "C"]
    assert [t.name for t in reg.pipeline_of("C")] == ["C"]
    reg.check()


def test_pipeline_of_unknown_start(reg: Registry) -> None:
    with pytest.raises(UnknownJobType):
        reg.pipeline_of("MISSING")


@pytest.mark.parametrize(
    "edges",
    [
        {"SELF": "SELF"},
        {"A": "B", "B": "A"},
        {"A": "B", "B": "C", "C": "B"},
    ],
)
def test_a_pipeline_loop_fails_check(reg: Registry, edges: dict[str, str]) -> None:
    for name, then in edges.items():
        define(reg, name, then=then)
    with pytest.raises(JobDefinitionError, match="loops"):
        reg.check()


def test_an_unknown_then_fails_check_naming_the_missing_type(reg: Registry) -> None:
    define(reg, "FIRST", then="GENERATE_REPRT")
    with pytest.raises(OrchestratorError, match="GENERATE_REPRT"):
        reg.check()


def test_an_unknown_then_is_a_definition_error_naming_the_declaring_type(reg: Registry) -> None:
    define(reg, "FIRST", then="GENERATE_REPRT")
    with pytest.raises(JobDefinitionError, match="FIRST"):
        reg.check()


def test_a_later_step_needs_defaults_for_its_input(reg: Registry) -> None:
    define(reg, "HEAD", then="TAIL")
    define(reg, "TAIL", input=Required)
    with pytest.raises(JobDefinitionError, match="TAIL"):
        reg.check()


def test_a_first_step_may_require_input(reg: Registry) -> None:
    define(reg, "HEAD", input=Required, then="TAIL")
    define(reg, "TAIL", input=Defaults)
    reg.check()


def test_check_accepts_long_time_limits_and_delays(reg: Registry) -> None:
    define(reg, "LONG", time_limit=10**7, retry=RetryPolicy(max_delay=10**7))
    reg.check()


def test_validate_input_returns_the_model(reg: Registry) -> None:
    define(reg, "ROOMS", input=Rooms)
    data = reg.get("ROOMS").validate_input({"mode": "DEEP", "rooms": ["r1"]})
    assert isinstance(data, Rooms)
    assert data.rooms == ["r1"]
    assert data.depth == 1


def _fields(exc: InvalidInput) -> dict[str, str]:
    return {e.field: e.message for e in exc.errors}


def test_validate_input_reports_every_bad_field_prefixed_input(reg: Registry) -> None:
    define(reg, "ROOMS", input=Rooms)
    with pytest.raises(InvalidInput) as info:
        reg.get("ROOMS").validate_input({"rooms": [], "depth": "deep", "colour": "red"})
    fields = _fields(info.value)
    assert set(fields) == {"input.mode", "input.rooms", "input.depth", "input.colour"}
    assert all(message for message in fields.values())
    assert "input.mode: " in str(info.value)


def test_validate_input_names_nested_positions(reg: Registry) -> None:
    define(reg, "ROOMS", input=Rooms)
    with pytest.raises(InvalidInput) as info:
        reg.get("ROOMS").validate_input({"mode": "m", "rooms": ["ok", 7]})
    assert set(_fields(info.value)) == {"input.rooms.1"}


@pytest.mark.parametrize("not_an_object", [None, [], "text", 3])
def test_validate_input_of_a_non_object_is_reported_on_input(
    reg: Registry, not_an_object: object
) -> None:
    define(reg, "ROOMS", input=Rooms)
    with pytest.raises(InvalidInput) as info:
        reg.get("ROOMS").validate_input(not_an_object)
    assert set(_fields(info.value)) == {"input"}


def test_empty_input_rejects_unknown_fields(reg: Registry) -> None:
    define(reg, "PLAIN")
    assert reg.get("PLAIN").validate_input({}) == EmptyInput()
    with pytest.raises(InvalidInput) as info:
        reg.get("PLAIN").validate_input({"surprise": 1})
    assert set(_fields(info.value)) == {"input.surprise"}


def test_load_job_modules_loads_builtin_and_extra_types() -> None:
    loaded = load_job_modules(("tests.jobtypes",))
    for name in ("ANALYZE_INSPECTION", "GENERATE_REPORT", "TEST_FLAKY", "TEST_EFFECT"):
        assert name in loaded
        assert name in global_registry
    assert [t.name for t in loaded.pipeline_of("ANALYZE_INSPECTION")] == [
        "ANALYZE_INSPECTION",
        "GENERATE_REPORT",
    ]


def test_a_process_offers_only_the_types_its_modules_define() -> None:
    load_job_modules(("tests.jobtypes",))  # imported into this process...
    offered = load_job_modules(())  # ...but not named for this runtime
    assert "ANALYZE_INSPECTION" in offered
    assert "TEST_EFFECT" not in offered and "TEST_EFFECT" in global_registry


def test_a_type_its_modules_define_later_is_found_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that defines a type, sends a job, then defines another can send that too."""
    (tmp_path / "unit_late_jobs.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    offered = load_job_modules(("unit_late_jobs",))
    assert "UNIT_LATE" not in offered
    late = define_job("UNIT_LATE")(lambda ctx, data: None)
    late.__module__ = "unit_late_jobs"  # as if written in the module, after the start
    elsewhere = define_job("UNIT_ELSEWHERE")(lambda ctx, data: None)
    elsewhere.__module__ = "unit_other_jobs"
    assert offered.get("UNIT_LATE").handler is late
    assert "UNIT_ELSEWHERE" not in offered  # a module this process does not name


def test_load_job_modules_names_a_missing_module() -> None:
    with pytest.raises(JobDefinitionError, match=re.escape("tests.no_such_job_module")):
        load_job_modules(("tests.no_such_job_module",))


def test_load_job_modules_names_a_module_whose_imports_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "unit_broken_jobs.py").write_text("import unit_dependency_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(JobDefinitionError, match="unit_broken_jobs") as info:
        load_job_modules(("unit_broken_jobs",))
    # The underlying cause is kept, so the operator sees what was missing.
    assert "unit_dependency_that_is_not_there" in str(info.value)
    sys.modules.pop("unit_broken_jobs", None)
