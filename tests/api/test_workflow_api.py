"""A workflow over HTTP: created as any job type, shown with its steps, their
dependencies and their jobs' counts; a map's jobs paged by step; the OpenAPI document
describes it. (TEST_FLOW in tests/jobtypes.py: prepare -> items, a map -> summary.)"""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.api.test_jobs_api import create, tenant_headers


def test_a_workflow_shows_its_steps_as_they_stand(client: FlaskClient, tenant: str) -> None:
    created = create(client, tenant, {"type": "TEST_FLOW", "input": {"items": ["a", "b", "c"]}})
    shown = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    flow = shown["workflow"]
    assert (flow["name"], flow["status"]) == ("TEST_FLOW", "succeeded")
    steps = {s["name"]: s for s in flow["steps"]}
    assert [s["name"] for s in flow["steps"]] == ["prepare", "items", "summary"]
    assert steps["items"] | {"joinId": None} == {
        "name": "items",
        "type": "TEST_FLOW_ITEM",
        "after": ["prepare"],
        "map": True,
        "over": "prepare.items",
        "concurrency": 2,
        "allowFailures": 0,
        "jobs": {"succeeded": 3},
        "jobId": None,
        "joinId": None,
    }
    summary = client.get(
        f"/v1/jobs/{steps['summary']['jobId']}", headers=tenant_headers(tenant)
    ).get_json()
    assert summary["step"] == "summary" and summary["result"]["items"] == ["A", "B", "C"]
    assert [s["id"] for s in shown["pipeline"]["steps"]][2] == steps["items"]["joinId"]


def test_a_maps_jobs_are_paged_by_step(client: FlaskClient, tenant: str) -> None:
    items = [f"i{n}" for n in range(5)]
    created = create(client, tenant, {"type": "TEST_FLOW", "input": {"items": items}})
    flow = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    join = next(s for s in flow["workflow"]["steps"] if s["name"] == "items")["joinId"]
    seen, after = [], -1
    while True:
        page = client.get(
            f"/v1/jobs/{join}/children?step=items&limit=2&after={after}",
            headers=tenant_headers(tenant),
        ).get_json()
        seen += [child["input"]["item"] for child in page["children"]]
        if page["nextAfter"] is None:
            break
        after = page["nextAfter"]
    assert seen == items
    other_step = client.get(
        f"/v1/jobs/{join}/children?step=summary", headers=tenant_headers(tenant)
    ).get_json()
    assert other_step["children"] == []


def test_a_failed_workflow_says_so_and_shows_where(client: FlaskClient, tenant: str) -> None:
    body = {"type": "TEST_FLOW", "input": {"items": ["a", "b"], "failItems": ["b"]}}
    created = create(client, tenant, body)
    flow = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    assert flow["workflow"]["status"] == "failed"
    steps = {s["name"]: s for s in flow["workflow"]["steps"]}
    assert steps["items"]["jobs"].get("failed") == 1
    assert steps["summary"]["jobs"] == {}


def test_another_tenant_sees_nothing_of_it(client: FlaskClient, tenant: str) -> None:
    created = create(client, tenant, {"type": "TEST_FLOW", "input": {"items": ["a"]}})
    other = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers("tnt_other"))
    assert other.status_code == 404


def test_the_openapi_document_offers_the_workflow_with_its_input(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert "TEST_FLOW" in str(document["components"]["schemas"])


def test_the_stock_inspection_review_maps_over_rooms_and_reports_once(
    client: FlaskClient, tenant: str
) -> None:
    rooms = ["kitchen", "hall", "bath"]
    body = {"type": "INSPECTION_REVIEW", "input": {"analysisMode": "QUICK", "roomIds": rooms}}
    created = create(client, tenant, {**body, "subject": "insp_9"})
    shown = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    steps = {s["name"]: s for s in shown["workflow"]["steps"]}
    assert shown["workflow"]["status"] == "succeeded"
    assert steps["rooms"]["jobs"] == {"succeeded": 3}
    report = client.get(
        f"/v1/jobs/{steps['report']['jobId']}", headers=tenant_headers(tenant)
    ).get_json()
    assert report["result"]["roomIds"] == rooms
    assert report["result"]["inspectionId"] == "insp_9"


def test_a_workflows_id_stands_for_the_run(client: FlaskClient, tenant: str) -> None:
    """Its first job's record has the run's status, and once it succeeded, its last
    gate's result (the final steps' results by name); the answer to its creation already
    shows its steps."""
    created = create(client, tenant, {"type": "TEST_FLOW", "input": {"items": ["a", "b"]}})
    assert [s["name"] for s in created["workflow"]["steps"]] == ["prepare", "items", "summary"]
    done = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    assert done["status"] == "succeeded" and done["finishedAt"] is not None
    assert done["result"]["summary"]["items"] == ["A", "B"]

    body = {"type": "TEST_FLOW", "input": {"items": ["a", "b"], "failItems": ["b"]}}
    failed = create(client, tenant, body)
    shown = client.get(f"/v1/jobs/{failed['id']}", headers=tenant_headers(tenant)).get_json()
    assert (shown["status"], shown["result"]) == ("failed", None)
    assert shown["pipeline"]["steps"][0]["status"] == "succeeded"  # the gate itself
