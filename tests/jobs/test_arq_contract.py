"""The arq contract, run: each pin is a test, nothing arq-specific goes unpinned, and a broken pin is named.

``python -m pytest tests/jobs/test_arq_contract.py`` fails, naming the pin, when the
installed arq stops providing what ``jobs`` relies on; the last tests take pinned things
away (or change them) and show it.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import jobs.worker
from tests.conftest import ROOT
from tests.jobs.arq_contract import (
    IMPORTED,
    PINS,
    WORKER_CALLS,
    WORKER_STATE,
    ArqWorker,
    Pin,
    arq_contract_violations,
    problem_of,
    self_attributes,
    source_tree,
    subclass_names,
)


@pytest.mark.parametrize("pin", PINS, ids=[pin.name for pin in PINS])
async def test_installed_arq_honours(pin: Pin) -> None:
    problem = await problem_of(pin)
    assert problem is None, f"{pin.name}: {problem}"


def test_every_arq_member_the_worker_uses_is_pinned() -> None:
    used = {node.attr for node in self_attributes(source_tree(jobs.worker.Worker))}
    pinned = set(WORKER_STATE) | set(WORKER_CALLS) | {"pool"}
    assert used - subclass_names() - pinned == set()


def test_every_arq_import_in_jobs_and_service_is_pinned() -> None:
    imported: set[str] = set()
    for path in [*ROOT.glob("jobs/**/*.py"), *ROOT.glob("service/**/*.py")]:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "arq":
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "arq"}
    pinned = {f"{module}.{name}" for module, names in IMPORTED.items() for name in names}
    assert imported - pinned == set()


async def _failing_pins() -> set[str]:
    return {violation.split(": ", 1)[0] for violation in await arq_contract_violations()}


async def test_installed_arq_honours_the_whole_contract() -> None:
    assert await arq_contract_violations() == []


async def test_contract_names_a_method_arq_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ArqWorker, "_release_sem_dec_counter_on_complete")
    assert await _failing_pins() == {"Worker._release_sem_dec_counter_on_complete", "Worker.sem holds a slot per job"}


async def test_contract_names_instance_state_arq_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ArqWorker.__init__

    @functools.wraps(original)
    def without_job_tasks(self: ArqWorker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self.job_tasks

    monkeypatch.setattr(ArqWorker, "__init__", without_job_tasks)
    assert await _failing_pins() == {"Worker().job_tasks"}


def _finish_job_taking(parameters: list[inspect.Parameter]) -> Callable[..., Awaitable[None]]:
    """A ``finish_job`` whose signature is ``parameters``."""

    async def finish_job(self: ArqWorker, *args: Any) -> None:
        pass

    setattr(finish_job, "__signature__", inspect.Signature(parameters))  # noqa: B010 (mypy refuses the attribute)
    return finish_job


async def test_contract_names_an_overridden_method_whose_signature_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    parameters = list(inspect.signature(ArqWorker.finish_job).parameters.values())
    monkeypatch.setattr(ArqWorker, "finish_job", _finish_job_taking(parameters[:-1]))
    assert await _failing_pins() == {"Worker.finish_job (overridden)"}


async def test_contract_names_record_health_once_it_could_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async def iteration_that_beats(self: jobs.worker.Worker) -> int:
        await self.heart_beat()  # arq's own heart_beat records health
        return -1

    monkeypatch.setattr(jobs.worker.Worker, "_iteration", iteration_that_beats)
    assert await _failing_pins() == {"Worker.record_health never runs", "Worker.health_check_key is never read"}


async def test_contract_names_run_job_once_the_override_takes_other_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    parameters = list(inspect.signature(jobs.worker.Worker.finish_job).parameters.values())
    handed_back = inspect.Parameter("handed_back", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    monkeypatch.setattr(jobs.worker.Worker, "finish_job", _finish_job_taking([*parameters, handed_back]))
    assert await _failing_pins() == {
        "Worker.finish_job (overridden)",
        "Worker.run_job calls finish_job with the override's 7 arguments",
    }
