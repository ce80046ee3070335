"""The code blocks of the README and of the documentation site, which the suite runs.

- ```bash: run by bash against a real `make run` (tests/e2e/test_make_run.py).
- ```python: run; the blocks of one page in order, in one interpreter. Blocks that use
  the HTTP client run against `make run`; the others with inline dispatch on a fresh
  database (tests/db/test_doc_examples.py).
- ```sh: a command the suite cannot run as written; the comment just above says why.
- ```json, ```text: output or files, never run.

`<!-- not run: reason -->` on the line above a block marks it as not run; a ```sh block
must carry one, and so must any ```python block the suite should skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN = {"bash", "python"}
NOT_RUN = {"sh", "json", "text"}
NOT_RUN_MARK = re.compile(r"^<!-- not run: (?P<reason>.+\S) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\n(?P<code>.*?)^```$", re.S | re.M)
CLIENT = "orchestrator.client"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given, for a block the suite does not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN and self.not_run is None

    @property
    def uses_client(self) -> bool:
        return CLIENT in self.code


def pages() -> list[Path]:
    """The README, then the site's own pages (not the files they include)."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = NOT_RUN_MARK.match(above)
        found.append(
            Block(path, line, match["lang"], match["code"], mark["reason"] if mark else None)
        )
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def python_sessions(*, client: bool) -> dict[Path, list[Block]]:
    """Per page, the Python blocks that run, in order: those that use the HTTP client, or
    the others."""
    sessions: dict[Path, list[Block]] = {}
    for block in all_blocks():
        if block.lang == "python" and block.runs and block.uses_client == client:
            sessions.setdefault(block.path, []).append(block)
    return sessions


# The module a page's Python blocks run in, as a reader's own module of job types would:
# `ORCH_JOB_MODULES` names it, so the types they define are the process's to send.
EXAMPLES_MODULE = "doc_examples"

# Runs a page's Python blocks in order in one module; blocks arrive as JSON on stdin.
SESSION_RUNNER = f"""
import json, sys, traceback, types
module = sys.modules[{EXAMPLES_MODULE!r}] = types.ModuleType({EXAMPLES_MODULE!r})
for where, code in json.load(sys.stdin):
    try:
        exec(compile(code, where, "exec"), module.__dict__)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the example at {{where}} failed")
"""
