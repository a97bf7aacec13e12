"""The layers of docs/ARCHITECTURE.md, checked on the source: what each package may import.

Every ``import`` of the package is read from the source (function-level imports included), so a cycle
hidden behind a local import is found too.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "mode_policy"
# Lower layers know nothing of the layers built on them.
HIGH = {"runtime", "serving", "training", "evaluation", "distill", "cli"}
FORBIDDEN = {
    "diffusion": {"nn", "data", "envs", "policies", *HIGH},
    "nn": {"data", "envs", "policies", *HIGH},
    "data": {"nn", "envs", "policies", *HIGH},  # no model
    "envs": {"policies", *HIGH},
    "policies": {"envs", *HIGH},  # "onnx" comes by entry point
    "runtime": {"envs", "serving", "training", "evaluation", "distill", "cli"},
    "serving": {"runtime", "training", "distill", "cli"},  # serves any registered policy type
    "training": {"runtime", "serving", "distill", "cli"},
    "evaluation": {"runtime", "serving", "training", "distill", "cli"},
    "distill": {"runtime", "serving", "evaluation", "cli"},
}


def _package(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return parts[0]


def package_imports() -> dict[str, set[str]]:
    """package -> the mode_policy packages (or top-level modules) its files import."""
    graph: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        own = _package(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mode_policy" and len(parts) > 1 and parts[1] != own:
                    graph.setdefault(own, set()).add(parts[1])
    return graph


def test_lower_layers_import_nothing_from_higher_ones():
    graph = package_imports()
    breaches = {pkg: sorted(graph.get(pkg, set()) & banned) for pkg, banned in FORBIDDEN.items()}
    assert not {pkg: names for pkg, names in breaches.items() if names}


def test_no_package_imports_another_in_a_circle():
    graph = package_imports()
    for a, b in itertools.permutations(graph, 2):
        assert not (_reaches(graph, a, b) and _reaches(graph, b, a)), f"{a} and {b} import each other"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False
