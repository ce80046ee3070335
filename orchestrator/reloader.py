"""Under `make run`, a change to a job module takes effect without a restart by hand: the
supervisor watches the job modules' packages and restarts the programs that load them
(`Supervisor.watch`).

It looks at the `.py` files' modification times and sizes once a second. The packages of
job modules hold a few dozen files; a scan costs well under a millisecond and needs
neither a dependency nor the kernel's inotify limits.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

Stamp = tuple[int, int]  # modification time (ns) and size


class SourceWatcher:
    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = sorted({root.resolve() for root in roots})
        self._seen = self._scan()

    @classmethod
    def for_modules(cls, modules: Iterable[str]) -> SourceWatcher:
        """Watch the top-level package (or module) of each job module: a job module's
        helpers beside it count as much as itself. Found without importing anything;
        installed packages (the standard library's, the virtual environment's) are left
        out."""
        # Found where the processes find them: the current folder is importable for them
        # (`registry.load_job_modules`), not always for this one (a console script).
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        roots = []
        installed = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
        for module in modules:
            spec = importlib.util.find_spec(module.partition(".")[0])
            if spec is None or spec.origin in ("built-in", "frozen"):
                continue
            # A package (a namespace package has no origin, only its folders), or a module.
            locations = list(spec.submodule_search_locations or [])
            found = [Path(p) for p in locations] or ([Path(spec.origin)] if spec.origin else [])
            roots += [
                root
                for root in found
                if not any(root.resolve().is_relative_to(prefix) for prefix in installed)
            ]
        return cls(roots)

    def changed(self) -> list[str]:
        """The files changed, added or removed since the last look, by path."""
        now = self._scan()
        differ = {
            path for path in now.keys() | self._seen.keys() if now.get(path) != self._seen.get(path)
        }
        self._seen = now
        return sorted(differ)

    def _scan(self) -> dict[str, Stamp]:
        found: dict[str, Stamp] = {}
        for root in self.roots:
            files = [root] if root.is_file() else _python_files(root)
            for path in files:
                try:
                    stat = path.stat()
                except OSError:  # removed as we looked
                    continue
                found[str(path)] = (stat.st_mtime_ns, stat.st_size)
        return found


def _python_files(root: Path) -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d != "__pycache__" and not d.startswith(".")]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return files
