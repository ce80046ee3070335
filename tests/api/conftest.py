"""The Flask app on a fresh migrated SQLite database, with inline dispatch.

Inline dispatch runs a job's whole pipeline inside the POST that creates it, so a test can
read the outcome straight after creating the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return load_settings(
        env="development",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    yield runtime
    runtime.database.dispose()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    return api.create_app(runtime=runtime)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def tenant() -> str:
    return f"tnt_{uuid.uuid4().hex[:10]}"
