"""The imports of ``service`` and ``jobs`` are a one-way street, read from the source.

Foundations (settings, redis, logging) <- jobs <- the web layer of ``service``. Imports under
``if TYPE_CHECKING:`` never run and are left out: ``service/app_keys.py`` names the types of
the modules that use its keys that way.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.conftest import ROOT

FOUNDATIONS = frozenset({"service", "service.settings", "service.redis", "service.logging"})


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(path): path for package in ("service", "jobs") for path in (ROOT / package).rglob("*.py")}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert node.level == 0, f"{module}: a relative import, which this reading does not follow"
    return [f"{node.module}.{alias.name}" for alias in node.names]


def _runtime_imports(module: str) -> set[str]:
    """The project modules that ``module`` imports when it runs (at top level or inside functions)."""
    tree = ast.parse(MODULES[module].read_text())
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in type_only:
            for name in _imported(module, node):
                while name and name not in MODULES:  # `from service.x import f` imports the module service.x
                    name = name.rpartition(".")[0]
                if name and name != module:
                    found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {module: _runtime_imports(module) for module in MODULES}


def test_no_import_cycle_among_service_and_jobs_modules() -> None:
    graph = _graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert set(order) == set(MODULES)


def test_foundations_import_nothing_but_foundations() -> None:
    graph = _graph()
    reaching_up = {module: graph[module] - FOUNDATIONS for module in FOUNDATIONS}
    assert {module: names for module, names in reaching_up.items() if names} == {}


def test_jobs_import_only_the_foundations_of_service() -> None:
    reaching_up = {
        module: {name for name in imports if name.startswith("service") and name not in FOUNDATIONS}
        for module, imports in _graph().items()
        if module.startswith("jobs")
    }
    assert {module: names for module, names in reaching_up.items() if names} == {}
