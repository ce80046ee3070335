"""Fuzz the running server against its own OpenAPI document with Schemathesis: no 5xx and
no answer outside the document, with a tenant's key, another tenant's, a wrong one, and
none. The server is real (HTTP on loopback), in api-key mode, on a fresh database."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks
from werkzeug.serving import make_server

import api
from orchestrator import apikeys, migrate
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from tests.servers import free_port

SECRET = "fuzz-service-secret-" + "q" * 20
EXAMPLES = 30
SENT: Counter[str] = Counter()
# No 5xx, and every answer inside the document: a documented status, content type, headers
# and a body matching its schema. (Schemathesis's "rejected positive data" heuristic is left
# out: the API has rules across fields, such as delaySeconds xor runAt, that a schema
# cannot state; such requests get a documented 422.)
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
CREDENTIALS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    database_url = f"sqlite:///{folder / 'fuzz.db'}"
    migrate.upgrade(database_url)
    settings_ = load_settings(
        env="production",
        database_url=database_url,
        dispatch_mode="inline",
        service_auth_secret=SECRET,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    runtime = Runtime.build(settings_)
    alice = apikeys.create_key(runtime.database, "alice", "fuzz").key
    bob = apikeys.create_key(runtime.database, "bob", "fuzz").key
    CREDENTIALS.update(
        {
            "tenant": {"Authorization": f"Bearer {alice}"},
            "other-tenant": {"Authorization": f"Bearer {bob}"},
            "wrong": {"Authorization": f"Bearer {alice[:-2]}xx", "X-Service-Auth": "nope"},
            "none": {},
            "service": {"X-Service-Auth": SECRET},
        }
    )
    httpd = make_server("127.0.0.1", free_port(), api.create_app(runtime=runtime), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    runtime.database.dispose()


def operations(server: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_errors_and_no_undocumented_answers(server: str) -> None:
    """Every operation, EXAMPLES generated cases, each sent with every set of credentials;
    each answer checked: not a 5xx, a documented status, a body matching its schema."""
    for operation in operations(server):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            for name, headers in CREDENTIALS.items():
                case.call_and_validate(headers=headers, checks=CHECKS)
                SENT[name] += 1

        fuzz()


def test_the_fuzzing_sent_at_least_a_thousand_requests() -> None:
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "fuzz.json").write_text(
        json.dumps({"requests": dict(SENT), "total": sum(SENT.values())})
    )
    assert sum(SENT.values()) >= 1000, SENT
