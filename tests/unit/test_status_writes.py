"""A job's status changes in one place: the state machine (`orchestrator.transitions`, and
the statements it runs, `orchestrator.transition_statements`). Anywhere else, a write of
a status would be a transition that skips its fence, its event and its checks.

Creating a job (`Job(status=...)`) is a birth, not a change, and is not looked for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE_MACHINE = {"orchestrator/transitions.py", "orchestrator/transition_statements.py"}
SQL_STATUS_WRITE = re.compile(r"\bset\b[^;]*\bstatus\s*=", re.IGNORECASE | re.DOTALL)


def status_writes(source: str) -> list[int]:
    """The lines of `source` that write a job's status: `obj.status = ...` (not `self`'s
    own attribute), `setattr(obj, "status", ...)`, an update of `Job` or `JOBS` whose
    `.values(...)` name a status (as a keyword, in a dict, or through `**` of a dict
    defined in the module), and SQL text that sets a status."""
    tree = ast.parse(source)
    with_status = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign) and _has_status_key(node.value)
        for name in _names(node)
    }
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [t.lineno for t in targets if _is_status_attribute(t)]
        elif isinstance(node, ast.Call):
            if _sets_status_attribute(node) or _updates_status(node, with_status):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL_STATUS_WRITE.search(node.value)
        ):
            lines.append(node.lineno)
    return sorted(set(lines))


def _names(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _has_status_key(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Dict) and any(
        isinstance(k, ast.Constant) and k.value == "status" for k in value.keys
    )


def _is_status_attribute(target: ast.expr) -> bool:
    return (
        isinstance(target, ast.Attribute)
        and target.attr == "status"
        and not (isinstance(target.value, ast.Name) and target.value.id == "self")
    )


def _sets_status_attribute(call: ast.Call) -> bool:
    return (
        isinstance(call.func, ast.Name)
        and call.func.id == "setattr"
        and len(call.args) > 1
        and isinstance(call.args[1], ast.Constant)
        and call.args[1].value == "status"
    )


def _updates_status(call: ast.Call, with_status: set[str]) -> bool:
    """`update(Job)....values(...)` naming a status."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "values"):
        return False
    if not _updates_jobs(call.func.value):
        return False
    return (
        any(keyword.arg == "status" for keyword in call.keywords)
        or any(_has_status_key(arg) for arg in call.args)
        or any(
            isinstance(v, ast.Name) and v.id in with_status
            for v in [*call.args, *(k.value for k in call.keywords if k.arg is None)]
        )
    )


def _updates_jobs(node: ast.expr) -> bool:
    """Whether a chain of calls starts from `update(Job)` or `update(JOBS)`."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "update" and node.args:
                target = node.args[0]
                return isinstance(target, ast.Name) and target.id in {"Job", "JOBS"}
            node = func
        else:
            node = node.value
    return False


def test_the_detector_finds_each_way_of_writing_a_status() -> None:
    source = """
job.status = JobStatus.FAILED
setattr(job, "status", "failed")
session.execute(sa.update(Job).values(status="failed"))
session.execute(sa.update(JOBS).where(JOBS.c.id == x).values({"status": "failed"}))
session.execute(sa.text("UPDATE jobs SET updated_at = now(), status = 'failed'"))
VALUES = {"status": "failed"}
session.execute(sa.update(Job).values(**VALUES))
self.status = status
print(job.status)
session.execute(sa.update(MaintenanceRun).values(status="done"))
"""
    assert status_writes(source) == [2, 3, 4, 5, 6, 8]


def test_no_module_but_the_state_machine_writes_a_status() -> None:
    found = {}
    for package in ("orchestrator", "api", "tasks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name in STATE_MACHINE or "/migrations/" in name:
                continue  # migrations rewrite history's rows, as their own kind of change
            if lines := status_writes(path.read_text()):
                found[name] = lines
    assert found == {}, f"status written outside the state machine: {found}"


def test_the_state_machine_does_write_statuses() -> None:
    """The search reads the files it should: the state machine's own writes are found."""
    assert status_writes((ROOT / "orchestrator/transition_statements.py").read_text())
