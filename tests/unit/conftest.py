"""Fixtures of the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def bare_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A shell with no ORCH_* (or PORT) variable exported, in a folder where no `make run`
    runs (whose settings a bare process would take), as a newcomer's second shell is."""
    for name in list(os.environ):
        if name.upper().startswith("ORCH_") or name.upper() == "PORT":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
