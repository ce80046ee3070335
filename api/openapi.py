"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests
and shape responses, served at `/openapi.json` with interactive docs at `/docs`.

Each job type contributes its own request body (its `type` and its input schema), so the
document tells a client exactly what every job type accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from api.internal import WorkerRun
from api.schemas import (
    ArchiveRequest,
    BulkRetry,
    BulkRetryResult,
    ChildList,
    ChildrenQuery,
    CreateJob,
    EventList,
    EventsQuery,
    JobBatch,
    JobOut,
    JobPage,
    ListQuery,
    MaintenanceRunOut,
    RetryRequest,
    StatsQuery,
    TenantStandings,
    TenantStatsOut,
)
from orchestrator.registry import Registry
from orchestrator.runner import SkipReason
from orchestrator.runtime import Runtime
from orchestrator.service import MAX_BATCH_KEY_LENGTH
from orchestrator.settings import AuthMode, Settings

blueprint = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    instance: str
    detail: str | None = None
    errors: list[dict[str, str]] | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class Accepted(BaseModel):
    jobId: str  # noqa: N815 - the wire format's name
    tenantId: str  # noqa: N815
    status: str


class RunsList(BaseModel):
    runs: list[MaintenanceRunOut]


class PushResult(BaseModel):
    jobId: str  # noqa: N815
    outcome: str = Field(
        description="`succeeded`, `retrylater`, `failed`, `cancelled` or `skipped`."
    )
    reason: SkipReason | None = Field(
        None, description="Why a skipped delivery ran nothing (only when `skipped`)."
    )


class Stats(BaseModel):
    since: str
    dispatches: dict[str, dict[str, int]] = Field(default_factory=dict)


class Swept(BaseModel):
    sent: int = Field(description="Jobs admitted and sent.")
    missing: int = Field(description="Admitted jobs the broker no longer held, admitted again.")


class Reaped(BaseModel):
    reaped: int


class CronFiring(BaseModel):
    cron: str
    occurrence: str


class CronFired(BaseModel):
    fired: list[CronFiring]


MODELS: list[type[BaseModel]] = [
    CreateJob,
    JobOut,
    JobPage,
    JobBatch,
    EventList,
    RetryRequest,
    TenantStandings,
    BulkRetry,
    BulkRetryResult,
    ArchiveRequest,
    MaintenanceRunOut,
    WorkerRun,
    Problem,
    Health,
    Readiness,
    Accepted,
    RunsList,
    PushResult,
    Stats,
    Swept,
    Reaped,
    CronFired,
]


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    security: str | None  # "tenant", "service" or None
    responses: dict[int, type[BaseModel] | None]  # None: plain text (Prometheus')
    body: type[BaseModel] | dict[str, Any] | None = None
    query: type[BaseModel] | None = None
    body_required: bool = True
    problems: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)  # answers' headers


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def operations() -> list[Operation]:
    tenant_errors = (400, 401, 404, 410, 422, 429)
    return [
        Operation(
            "post",
            "/v1/jobs",
            "Create a job (and its pipeline)",
            "jobs",
            "tenant",
            {201: JobOut, 200: JobOut},
            body={"$ref": "#/components/schemas/NewJob"},
            problems=(400, 401, 409, 413, 422, 429),
            extra={"parameters": [_idempotency_header(256)]},
            headers={
                201: {"Location": {"description": "The job's URL", "schema": {"type": "string"}}}
            },
        ),
        Operation(
            "post",
            "/v1/jobs:batch",
            "Create up to 1,000 jobs at once",
            "jobs",
            "tenant",
            {201: JobBatch, 200: JobBatch},
            body={"$ref": "#/components/schemas/NewBatch"},
            problems=(400, 401, 409, 413, 422, 429),
            extra={"parameters": [_idempotency_header(MAX_BATCH_KEY_LENGTH)]},
        ),
        Operation(
            "get",
            "/v1/jobs",
            "List jobs, newest first",
            "jobs",
            "tenant",
            {200: JobPage},
            query=ListQuery,
            problems=(400, 401, 422),
        ),
        Operation(
            "get",
            "/v1/jobs/{job_id}",
            "A job and its pipeline",
            "jobs",
            "tenant",
            {200: JobOut},
            problems=tenant_errors,
        ),
        Operation(
            "get",
            "/v1/jobs/{job_id}/events",
            "A job's events",
            "jobs",
            "tenant",
            {200: EventList},
            query=EventsQuery,
            problems=tenant_errors,
        ),
        Operation(
            "get",
            "/v1/jobs/{job_id}/children",
            "A join's children, in spawn order",
            "jobs",
            "tenant",
            {200: ChildList},
            query=ChildrenQuery,
            problems=tenant_errors,
        ),
        Operation(
            "post",
            "/v1/jobs/{job_id}/cancel",
            "Cancel a job and its later steps",
            "jobs",
            "tenant",
            {200: JobOut, 202: JobOut},
            problems=(*tenant_errors, 409),
        ),
        Operation(
            "post",
            "/v1/jobs/{job_id}/retry",
            "Retry a failed or cancelled job",
            "jobs",
            "tenant",
            {200: JobOut},
            body=RetryRequest,
            body_required=False,
            problems=(*tenant_errors, 409, 413, 422),
        ),
        Operation(
            "post",
            "/v1/jobs/retry",
            "Retry failed jobs in bulk",
            "jobs",
            "tenant",
            {200: BulkRetryResult},
            body=BulkRetry,
            body_required=False,
            problems=(400, 401, 413, 422, 429),
        ),
        Operation(
            "get",
            "/v1/stats",
            "The tenant's jobs in figures",
            "jobs",
            "tenant",
            {200: TenantStatsOut},
            query=StatsQuery,
            problems=(400, 401, 422, 429),
        ),
        Operation("get", "/healthz", "Liveness", "operations", None, {200: Health}),
        Operation(
            "get", "/readyz", "Readiness", "operations", None, {200: Readiness, 503: Readiness}
        ),
        Operation(
            "post",
            "/admin/maintenance/archive",
            "Enqueue the archival job",
            "admin",
            "service",
            {202: Accepted},
            body=ArchiveRequest,
            body_required=False,
            problems=(400, 401, 413, 422),
        ),
        Operation(
            "get",
            "/admin/maintenance/jobs/{job_id}",
            "A system job (archival's, a cron job's not per tenant)",
            "admin",
            "service",
            {200: JobOut},
            problems=(401, 404, 410),
        ),
        Operation(
            "get",
            "/admin/maintenance/runs",
            "Latest maintenance runs",
            "admin",
            "service",
            {200: RunsList},
            problems=(401,),
        ),
        Operation(
            "get",
            "/admin/tenants/stats",
            "Each tenant's backlog, running jobs and share of admissions",
            "admin",
            "service",
            {200: TenantStandings},
            problems=(401,),
        ),
        Operation(
            "post",
            "/internal/worker/run",
            "Run a pushed job (Cloud Tasks)",
            "internal",
            "service",
            {200: PushResult},
            body=WorkerRun,
            problems=(400, 401, 413, 422, 503),
        ),
        Operation(
            "get",
            "/internal/stats",
            "Dispatch counts per mode",
            "internal",
            "service",
            {200: Stats},
            problems=(401,),
        ),
        Operation(
            "post",
            "/admin/maintenance/sweep",
            "The dispatcher's round: admit what fits, again what went missing",
            "admin",
            "service",
            {200: Swept},
            body_required=False,
            problems=(401,),
        ),
        Operation(
            "post",
            "/admin/maintenance/reap",
            "Take back runs whose lease expired",
            "admin",
            "service",
            {200: Reaped},
            body_required=False,
            problems=(401,),
        ),
        Operation(
            "post",
            "/admin/cron/tick",
            "Fire each cron's latest occurrence that has not fired",
            "admin",
            "service",
            {200: CronFired},
            body_required=False,
            problems=(401,),
        ),
        Operation(
            "get",
            "/metrics",
            "Prometheus metrics (text exposition format)",
            "operations",
            "service",
            {200: None},
            problems=(401,),
        ),
    ]


def _idempotency_header(longest: int) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": longest},
    }


def build_document(settings: Settings, registry: Registry) -> dict[str, Any]:
    _, schemas = models_json_schema([(m, "serialization") for m in MODELS], ref_template=REF)
    components: dict[str, Any] = dict(schemas.get("$defs", {}))
    components["NewJob"] = _new_job_schema(registry, components)
    components["NewBatch"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "jobs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"$ref": "#/components/schemas/NewJob"},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orchestrator",
            "version": "1.0.0",
            "description": "A multi-tenant background-job orchestrator on Celery.",
        },
        "paths": _paths(),
        "components": {"schemas": components, "securitySchemes": _security_schemes(settings)},
        "security": [],
    }


def _new_job_schema(registry: Registry, components: dict[str, Any]) -> dict[str, Any]:
    """One body per public job type: `type` fixed, `input` that type's own schema."""
    base = CreateJob.model_json_schema(ref_template=REF)
    aliases, one_of_each = _other_names(CreateJob, base["properties"])
    variants = []
    for name in registry.public_names():
        input_schema = registry.get(name).input_model.model_json_schema(ref_template=REF)
        components.update(input_schema.pop("$defs", {}))
        properties = {
            **base["properties"],
            **aliases,
            "type": {"const": name},
            "input": input_schema,
        }
        variants.append(
            {
                "type": "object",
                "properties": properties,
                # An input with required fields must be sent; one with defaults may be left out.
                "required": ["type", "input"] if input_schema.get("required") else ["type"],
                "additionalProperties": False,
                "title": f"New {name} job",
                **({"allOf": one_of_each} if one_of_each else {}),
            }
        )
    return {"oneOf": variants, "discriminator": {"propertyName": "type"}}


def _other_names(
    model: type[BaseModel], properties: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A field's other accepted names (`AliasChoices`: `inspectionId` for `subject`), as
    properties of their own, and for each, that a body gives one name or the other."""
    extra: dict[str, Any] = {}
    exclusive = []
    for name, info in model.model_fields.items():
        if not isinstance(info.validation_alias, AliasChoices):
            continue
        for other in info.validation_alias.choices[1:]:
            described = f"Another name for `{name}`: give one or the other."
            same = {k: v for k, v in properties[name].items() if k != "title"}
            extra[str(other)] = {**same, "description": described}
            exclusive.append({"not": {"required": [name, str(other)]}})
    return extra, exclusive


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in operations():
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return paths


def _operation(op: Operation) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{op.method}_{op.path.strip('/')}".replace("/", "_")
        .replace("{", "")
        .replace("}", ""),
        "responses": _responses(op),
    }
    parameters = [JOB_ID] if "{job_id}" in op.path else []
    parameters += _query_parameters(op.query) + op.extra.get("parameters", [])
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        schema = (
            op.body if isinstance(op.body, dict) else {"$ref": REF.format(model=op.body.__name__)}
        )
        spec["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    if op.security == "tenant":
        spec["security"] = [{"tenant": []}]
    elif op.security == "service":
        spec["security"] = [{"serviceSecret": []}, {"bearer": []}]
    return spec


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code, model in op.responses.items():
        description = "OK" if code < 300 else "See body"
        responses[str(code)] = {"description": description}
        if code in op.headers:
            responses[str(code)]["headers"] = op.headers[code]
        if model is None:
            responses[str(code)]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        else:
            schema = {"$ref": REF.format(model=model.__name__)}
            responses[str(code)]["content"] = {"application/json": {"schema": schema}}
    problem = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
    for code in (*op.problems, 405, 500):
        responses.setdefault(str(code), {"description": "Problem", "content": problem})
    return responses


def _query_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _security_schemes(settings: Settings) -> dict[str, Any]:
    tenant: dict[str, Any] = (
        {"type": "http", "scheme": "bearer", "description": "A tenant's API key (ork_...)"}
        if settings.effective_auth_mode is AuthMode.API_KEY
        else {
            "type": "apiKey",
            "in": "header",
            "name": "X-Tenant-ID",
            "description": "The tenant, set by a trusted gateway",
        }
    )
    return {
        "tenant": tenant,
        "serviceSecret": {"type": "apiKey", "in": "header", "name": "X-Service-Auth"},
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A Google-signed OIDC token, or the service secret",
        },
    }


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    document = current_app.extensions.get("openapi")
    if document is None:
        document = build_document(runtime().settings, runtime().registry)
        current_app.extensions["openapi"] = document
    return jsonify(document)


@blueprint.get("/docs")
def docs() -> str:
    return render_template("docs.html")
