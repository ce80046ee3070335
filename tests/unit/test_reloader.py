"""The source watcher `make run` restarts programs by: what it watches, what it notices."""

from __future__ import annotations

import os
import sys
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


def test_finds_packages_in_the_current_folder_and_namespace_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `orchestrator dev` (a console script) sees them: the current folder is not on
    its path, but it is on the workers'."""
    (tmp_path / "plainjobs").mkdir()
    (tmp_path / "plainjobs" / "__init__.py").write_text("")
    (tmp_path / "nsjobs").mkdir()  # no __init__.py: a namespace package
    (tmp_path / "nsjobs" / "jobs.py").write_text("")
    (tmp_path / "single.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    watcher = SourceWatcher.for_modules(["plainjobs.jobs", "nsjobs.jobs", "single"])
    assert watcher.roots == sorted(
        p.resolve() for p in (tmp_path / "plainjobs", tmp_path / "nsjobs", tmp_path / "single.py")
    )
