"""A Celery pool process drops its parent's runtime and builds its own when it starts."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from orchestrator import celery_app, heap
from orchestrator.runtime import Runtime


class FakeDatabase:
    def __init__(self) -> None:
        self.disposed = False

    def dispose(self) -> None:
        self.disposed = True


class FakeRuntime:
    def __init__(self) -> None:
        self.database = FakeDatabase()


@pytest.fixture(autouse=True)
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> Any:
    # A pool process freezes its heap once started; the test process's must stay as it is.
    monkeypatch.setattr(heap, "freeze_startup_heap", lambda: None)
    Runtime._current = None
    yield
    Runtime._current = None


def test_a_new_pool_process_builds_its_own_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    inherited = FakeRuntime()
    Runtime._current = inherited  # type: ignore[assignment]
    built = FakeRuntime()
    monkeypatch.setattr(Runtime, "build", classmethod(lambda cls, settings: built))
    celery_app._start_pool_process()
    assert inherited.database.disposed  # the parent's connections are not shared
    assert Runtime._current is built  # built before the first job, not during it


def test_a_runtime_that_cannot_be_built_is_left_to_the_first_job(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(cls: type[Runtime], settings: Any) -> Runtime:
        raise RuntimeError("no such job module")

    monkeypatch.setattr(Runtime, "build", classmethod(broken))
    with caplog.at_level(logging.ERROR, logger="orchestrator.worker"):
        celery_app._start_pool_process()
    assert Runtime._current is None
    assert "could not build the runtime" in caplog.text
    with pytest.raises(RuntimeError, match="no such job module"):
        Runtime.current()
