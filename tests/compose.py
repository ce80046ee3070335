"""The compose file as the deployment tests read it: anchors and merge keys resolved, and
Compose's variable interpolation."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def load_compose() -> dict[str, Any]:
    """The compose file with anchors and merge keys (`<<:`) resolved."""
    data = YAML(typ="safe", pure=True).load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: `$$` is `$`; `${VAR}`, `${VAR:?msg}`, `${VAR:-x}`, `$VAR`."""
    pattern = re.compile(
        r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
        r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    )

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = variables.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and unset:
            raise AssertionError(f"compose needs {name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        if op.endswith("+"):
            return "" if unset else arg
        return value or ""

    return pattern.sub(replace, value)


def interpolate_all(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolate_all(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_all(value, variables) for key, value in node.items()}
    return node


def argv_of(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
