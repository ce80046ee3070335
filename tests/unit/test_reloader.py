"""The source watcher `make run` restarts programs by: what it watches, what it notices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.reloader import SourceWatcher


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "myjobs"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "jobs.py").write_text("A = 1\n")
    (root / "sub" / "helpers.py").write_text("B = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def test_watches_a_job_modules_whole_package_but_not_installed_ones(package: Path) -> None:
    watcher = SourceWatcher.for_modules(["myjobs.jobs", "json", "celery", "not_there"])
    assert watcher.roots == [package.resolve()]


def test_notices_edits_additions_and_removals_of_python_files(package: Path) -> None:
    watcher = SourceWatcher([package])
    assert watcher.changed() == []
    (package / "jobs.py").write_text("A = 10\n")
    (package / "sub" / "new.py").write_text("")
    (package / "notes.txt").write_text("not code")
    cache = package / "__pycache__"
    cache.mkdir()
    (cache / "jobs.cpython-311.pyc").write_bytes(b"\0")
    assert watcher.changed() == [str(package / "jobs.py"), str(package / "sub" / "new.py")]
    assert watcher.changed() == []  # told once
    (package / "sub" / "helpers.py").unlink()
    assert watcher.changed() == [str(package / "sub" / "helpers.py")]


def test_an_edit_that_keeps_the_size_is_seen_by_its_time(package: Path) -> None:
    watcher = SourceWatcher([package])
    target = package / "jobs.py"
    stat = target.stat()
    target.write_text("A = 2\n")  # same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert watcher.changed() == [str(target)]
