"""The rate limiter's modules import one another one way only, ``TYPE_CHECKING`` imports included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "service" / "ratelimit"


def imports_within(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of ``package`` it imports, wherever the import statement is."""
    prefix = ".".join(package.relative_to(ROOT).parts)
    modules = {f"{prefix}.{path.stem}": path for path in package.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = imported & modules.keys() - {name}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, a]``), or ``None``."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    return next((found for module in sorted(graph) if (found := visit(module, []))), None)


def test_rate_limiter_modules_have_no_import_cycle() -> None:
    graph = imports_within(PACKAGE)

    assert cycle_in(graph) is None
    assert graph["service.ratelimit.headers"] == set()  # the IETF header formats need nothing of the limiter
    assert "service.ratelimit.script" not in graph["service.ratelimit.policy"]  # policy knows no wire format


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert cycle_in(graph) == ["a", "b", "c", "a"]
