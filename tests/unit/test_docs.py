"""The documentation site builds with no warning, and its code blocks follow the rules
that let the suite run them (tests/docblocks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docblocks import NOT_RUN, ROOT, RUN, Block, all_blocks, pages

README_MAX_LINES = 300


def test_the_site_builds_strictly_with_no_warning(tmp_path: Path) -> None:
    """A broken link or anchor, a page missing from the nav, a reference the docstrings
    no longer hold: each is a warning, and --strict makes it an error."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "python-api.html").read_text().count("send_job") > 1
    _links_open_from_disk(tmp_path)


def _links_open_from_disk(site: Path) -> None:
    """Every page's links to other pages name a file: the README tells readers to open
    `site/index.html`, where a link to a folder opens the folder's listing."""
    for page in site.rglob("*.html"):
        if page.name == "404.html":  # a server's page, with links from the site's root
            continue
        for target in re.findall(r'href="([^"#?]+)[^"]*"', page.read_text()):
            if "://" in target or target.startswith(("mailto:", "data:")):
                continue
            linked = (page.parent / target).resolve()
            assert linked.is_file(), f"{page.relative_to(site)} links to {target}"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in pages()[1:]:
        assert f" {page.name}\n" in nav, page.name


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


@pytest.mark.parametrize("block", all_blocks(), ids=lambda block: block.where)
def test_each_block_runs_or_says_why_not(block: Block) -> None:
    assert block.lang in RUN | NOT_RUN, f"{block.where}: fence language {block.lang!r}"
    if block.lang == "sh":
        assert block.not_run, f"{block.where}: a sh block says why it is not run"
    if block.not_run is not None:
        assert block.lang in {"sh", "python"}, f"{block.where}: only commands are skipped"


def test_the_exceptions_stay_few() -> None:
    skipped = [block for block in all_blocks() if block.not_run is not None]
    ran = [block for block in all_blocks() if block.runs]
    assert len(skipped) <= 15 and len(ran) > 2 * len(skipped), [b.where for b in skipped]
