"""Text that cannot be stored, in every string the API takes: a property test.

Schemathesis generates only valid Unicode, so it never sends a JSON escape for a lone UTF-16
surrogate (`"\\ud800"`), which Python's JSON decoder turns into a string no encoder takes.
Here hypothesis puts such strings (and NUL characters) into every string field of every
request body the OpenAPI document describes, every object key, every header a route reads,
and percent-escapes of broken UTF-8 into every path and query string. The answer is always
a 4xx (a 422 naming the field, for bodies), never a 500, and nothing is written.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from orchestrator.models import Job, JobEvent
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.text import NUL_PROBLEM

SERVICE = {"X-Service-Auth": "dev-secret"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Each test on SQLite and on PostgreSQL: PostgreSQL refuses text (a NUL) that SQLite
    stores, so a field that reaches a query unchecked fails on one only."""
    return load_settings(
        env="development", database_url=database_url, dispatch_mode="inline",
        job_modules="tests.jobtypes",
    )  # fmt: skip


JOB_ID = "job_" + "0" * 28
# A valid body per operation: the hostile string goes into one field of it at a time.
BASE_BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/jobs"): {"type": "TEST_FLAKY"},
    ("post", "/v1/jobs:batch"): {"jobs": [{"type": "TEST_FLAKY"}]},
    ("post", "/v1/jobs/{job_id}/retry"): {},
    ("post", "/v1/jobs/retry"): {},
    ("post", "/admin/maintenance/archive"): {"dryRun": True},
    ("post", "/internal/worker/run"): {"jobId": JOB_ID},
}
HEADERS = (
    "X-Tenant-ID",
    "X-User-ID",
    "Idempotency-Key",
    "X-Service-Auth",
    "Authorization",
    "X-CloudTasks-TaskName",  # kept in a pushed job's events
    "X-CloudTasks-TaskRetryCount",
)

_bad_char = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\x00"])
# Text around one character no store takes.
hostile = st.tuples(st.text(max_size=4), _bad_char, st.text(max_size=4)).map("".join)
# Header values travel as latin-1 bytes: control characters and high bytes, no line breaks.
header_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"), max_size=40
)
broken_utf8 = st.sampled_from(["%ED%A0%80", "%FF", "%C3", "%00", "%ED%BF%BF", "%F4%90%80%80"])


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def string_paths(
    schema: dict[str, Any], doc: dict[str, Any], path: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Where a string may go in a body of `schema`: every string property and item (a
    job's `type` too), and a key of every object (text is checked before the schema)."""
    schema = _resolve(schema, doc)
    for variant in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
        yield from string_paths(variant, doc, path)
    if schema.get("type") == "string" or isinstance(schema.get("const"), str):
        yield path
    for name, prop in schema.get("properties", {}).items():
        yield from string_paths(prop, doc, (*path, name))
    if schema.get("type") == "object" or "properties" in schema:
        yield (*path, "anyKey")
    if "items" in schema:
        yield from string_paths(schema["items"], doc, (*path, 0))


def placed(base: Any, path: tuple[Any, ...], value: str) -> Any:
    body = json.loads(json.dumps(base))
    holder = body
    for step, following in zip(path, (*path[1:], None), strict=True):
        if following is None:
            break
        if isinstance(holder, list):
            holder = holder[step]
            continue
        holder = holder.setdefault(step, [{}] if isinstance(following, int) else {})
    holder[path[-1]] = value
    return body


def operations(client: FlaskClient) -> list[tuple[str, str, dict[str, Any]]]:
    doc = client.get("/openapi.json").get_json()
    return [
        (method, path, operation)
        for path, methods in doc["paths"].items()
        for method, operation in methods.items()
    ]


def _url(path: str) -> str:
    return path.replace("{job_id}", JOB_ID)


def _nothing_written(runtime: Runtime) -> None:
    with runtime.database.session() as session:
        for model in (Job, JobEvent):
            assert session.scalar(sa.select(sa.func.count()).select_from(model)) == 0


def test_every_body_field_and_key_refuses_unstorable_text(
    client: FlaskClient, runtime: Runtime
) -> None:
    doc = client.get("/openapi.json").get_json()
    cases = []
    for method, path, operation in operations(client):
        if "requestBody" not in operation:
            continue
        assert (method, path) in BASE_BODIES, f"give {method} {path} a valid body here"
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        cases += [(method, path, where) for where in set(string_paths(schema, doc))]
    assert len(cases) >= 20, cases

    @given(case=st.sampled_from(sorted(cases, key=str)), text=hostile, as_key=st.booleans())
    @examples(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def attack(case: tuple[str, str, tuple[Any, ...]], text: str, as_key: bool) -> None:
        method, path, where = case
        base = BASE_BODIES[(method, path)]
        body = placed(base, where, {text: 1} if as_key else text)
        raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a JSON escape
        response = client.open(
            _url(path),
            method=method.upper(),
            data=raw,
            content_type="application/json",
            headers={"X-Tenant-ID": "tnt_text", **SERVICE},
        )
        assert response.status_code == 422, (case, response.get_data(as_text=True))
        fields = [error["field"] for error in response.get_json()["errors"]]
        named = ".".join(str(step) for step in where)
        assert any(named == field or named.startswith(f"{field}.") for field in fields), fields

    attack()
    _nothing_written(runtime)


def test_headers_paths_and_queries_never_answer_500(client: FlaskClient, runtime: Runtime) -> None:
    ops = [(method, path) for method, path, _ in operations(client)]

    @given(
        op=st.sampled_from(ops),
        header=st.sampled_from(HEADERS),
        value=header_text,
        escape=broken_utf8,
    )
    @examples(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def attack(op: tuple[str, str], header: str, value: str, escape: str) -> None:
        method, path = op
        headers = {"X-Tenant-ID": "tnt_text", **SERVICE, header: value}
        body = BASE_BODIES.get((method, path))
        for url in (
            _url(path),
            path.replace("{job_id}", escape),
            f"{_url(path)}?type={escape}&cursor={escape}&status={escape}&limit={escape}"
            f"&step={escape}",
        ):
            response = client.open(
                url,
                method=method.upper(),
                headers=headers,
                json=body if body is not None else None,
            )
            assert response.status_code < 500, (method, url, header, value, response.get_data())

    attack()


@pytest.mark.parametrize("field", ["subject", "idempotencyKey", "type"])
def test_the_python_api_refuses_unstorable_text_naming_the_field(
    runtime: Runtime, field: str
) -> None:
    """Creation checks its text whichever way it came (a CLI argument holds a lone
    surrogate for every byte that is not UTF-8)."""
    from orchestrator.errors import InvalidInput  # noqa: PLC0415
    from orchestrator.service import NewJob  # noqa: PLC0415

    values = {"subject": None, "idempotency_key": None, "type": "TEST_FLAKY"}
    values["idempotency_key" if field == "idempotencyKey" else field] = "caf\udce9"
    with pytest.raises(InvalidInput) as raised:
        runtime.service.create(NewJob(tenant_id="tnt_text", **values))  # type: ignore[arg-type]
    assert [error.field for error in raised.value.errors] == [field]
    _nothing_written(runtime)


@pytest.mark.parametrize("key", ["a\x01b", "tab\there", "\x7f", "x" * 257])
def test_an_idempotency_key_header_that_is_no_key_is_a_422_naming_it(
    client: FlaskClient, runtime: Runtime, key: str
) -> None:
    response = client.post(
        "/v1/jobs",
        json={"type": "TEST_FLAKY"},
        headers={"X-Tenant-ID": "tnt_text", "Idempotency-Key": key},
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    assert [e["field"] for e in response.get_json()["errors"]] == ["Idempotency-Key"]
    _nothing_written(runtime)


@pytest.mark.parametrize("escape", ["%00", "a%00b"])
def test_a_step_filter_no_job_can_hold_is_a_422(client: FlaskClient, escape: str) -> None:
    headers = {"X-Tenant-ID": "tnt_text"}
    flow = client.post("/v1/jobs", json={"type": "TEST_FLOW"}, headers=headers).get_json()
    join = flow["pipeline"]["steps"][1]["id"]
    answer = client.get(f"/v1/jobs/{join}/children?step={escape}", headers=headers)
    assert answer.status_code == 422, answer.get_data()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_has_not_is_a_422_naming_it(
    client: FlaskClient, runtime: Runtime, number: str
) -> None:
    """Python's JSON reads NaN and Infinity; PostgreSQL's jsonb has no such numbers (a 500
    there, before), and SQLite would have kept what no client can read back."""
    body = '{"type": "TEST_FLAKY", "input": {"deep": [1, %s]}}' % number  # noqa: UP031
    response = client.post(
        "/v1/jobs",
        data=body,
        headers={"X-Tenant-ID": "tnt_text", "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    assert [e["field"] for e in response.get_json()["errors"]] == ["input.deep.1"]
    _nothing_written(runtime)


def _routes(client: FlaskClient) -> list[tuple[str, str]]:
    """Every route of the app (the dashboard's and the operator console's too, which the
    OpenAPI document leaves out), with a job id wherever a path takes one."""
    routes = []
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", JOB_ID, rule.rule)
        routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_a_query_field_no_store_takes_is_a_422_naming_it_on_every_route(
    client: FlaskClient,
) -> None:
    """The dashboard's filters and cursor went to the database as they came: a NUL was a
    500 there (found by a review), where the JSON API answered 422."""
    routes = _routes(client)
    assert any(path.startswith("/dashboard") for _, path in routes)
    assert any(path.startswith("/ops") for _, path in routes)
    for method, path in routes:
        response = client.open(
            f"{path}?limit=5&type=a%00b", method=method, headers={"X-Tenant-ID": "tnt_text"}
        )
        _names_the_field(response, "type", (method, path))


def _names_the_field(response: Any, field: str, where: object) -> None:
    """A 422 naming the field: in problem+json, or in the dashboard's error page."""
    assert response.status_code == 422, (where, response.status_code)
    if response.mimetype == "text/html":
        assert html.escape(f"{field} {NUL_PROBLEM}") in response.get_data(as_text=True), where
    else:
        assert response.get_json()["errors"] == [{"field": field, "message": NUL_PROBLEM}]


def test_a_form_field_no_store_takes_is_a_422_naming_it(client: FlaskClient) -> None:
    posts = [path for method, path in _routes(client) if method == "POST"]
    forms = [path for path in posts if path.startswith(("/dashboard", "/ops"))]
    assert len(forms) >= 3, posts
    for path in forms:
        response = client.post(
            path, data={"job": "a\x00b", "action": "retry"}, headers={"X-Tenant-ID": "tnt_text"}
        )
        _names_the_field(response, "job", path)
