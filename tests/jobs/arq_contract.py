"""The arq contract: what the project relies on in arq, as checks against the installed arq.

``jobs.worker.Worker`` subclasses arq's ``Worker`` (arq 0.28, maintenance-only): it reads
and writes about 25 of its members, overrides five of its methods, and leans on what arq's
``run_job`` does with them; the queue and the registry use arq's job format and helpers.
Each ``Pin`` is one such fact; ``arq_contract_violations()`` names every pin the installed
arq does not honour. ``test_arq_contract.py`` runs them, so an arq upgrade fails by name.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import arq.connections
import arq.jobs
import arq.utils
import arq.worker
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

import jobs.worker
from jobs.serialization import deserialize, job_payload, serialize, to_json
from jobs.tasks import TASKS
from jobs.worker import WorkerSettings

ArqWorker = arq.worker.Worker
Problem = str | None


@dataclass(frozen=True)
class Pin:
    """One thing the project relies on in arq; ``check`` says what is wrong, or ``None``."""

    name: str
    check: Callable[[ArqWorker], Problem | Awaitable[Problem]]


def source_tree(function: Any) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def self_attributes(tree: ast.AST) -> Iterator[ast.Attribute]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            yield node


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- arq's Worker: what the subclass reads, writes and calls ------------------------------

# Instance state arq's __init__ creates, with the type the subclass treats it as.
WORKER_STATE: dict[str, type | tuple[type, ...]] = {
    "tasks": dict,
    "job_tasks": dict,
    "aborting_tasks": set,
    "sem": asyncio.BoundedSemaphore,
    "job_counter": int,
    "max_jobs": int,
    "allow_pick_jobs": bool,
    "jobs_complete": int,
    "jobs_failed": int,
    "jobs_retried": int,
    "keep_result_s": (int, float),
    "keep_result_forever": bool,
    "ctx": dict,
    "on_startup": object,
    "on_shutdown": object,
    "functions": dict,
    "burst": bool,
    "queue_name": str,
    "main_task": type(None),
    "loop": asyncio.AbstractEventLoop,
    "_pool": ArqRedis,
}
# Methods the subclass calls without overriding them, with their parameters.
WORKER_CALLS = {
    "run_job": ["self", "job_id", "score"],
    "_release_sem_dec_counter_on_complete": ["self"],
}
OVERRIDDEN = ("main", "finish_job", "finish_failed_job", "close")


def _state(name: str, kind: type | tuple[type, ...]) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        if not hasattr(worker, name):
            return "arq's Worker() no longer has it"
        value = getattr(worker, name)
        return None if isinstance(value, kind) else f"is a {type(value).__name__}, expected {kind}"

    return Pin(f"Worker().{name}", check)


def _call(name: str, parameters: list[str]) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        method = getattr(ArqWorker, name, None)
        if method is None:
            return "arq's Worker no longer has it"
        found = _parameters(method)
        return None if found == parameters else f"takes {found}, expected {parameters}"

    return Pin(f"Worker.{name}", check)


def _override(name: str) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        theirs, ours = getattr(ArqWorker, name, None), getattr(jobs.worker.Worker, name)
        if theirs is None:
            return "arq's Worker no longer has it: the override is never called by arq"
        if not inspect.iscoroutinefunction(theirs):
            return "arq's is no longer a coroutine function"
        if _parameters(theirs) != _parameters(ours):
            return f"arq's takes {_parameters(theirs)}, the override {_parameters(ours)}"
        return None

    return Pin(f"Worker.{name} (overridden)", check)


def _option(name: str) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        parameter = inspect.signature(ArqWorker).parameters.get(name)
        if parameter is None or parameter.kind not in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return "arq's Worker() takes no such keyword argument"
        return None

    return Pin(f"Worker({name}=...)", check)


def _run_job_calls_finish_job_as_overridden(worker: ArqWorker) -> Problem:
    expected = _parameters(jobs.worker.Worker.finish_job)[1:]
    calls = [
        node
        for node in ast.walk(source_tree(ArqWorker.run_job))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "finish_job"
    ]
    passed = [[arg.id if isinstance(arg, ast.Name) else ast.unparse(arg) for arg in call.args] for call in calls]
    if passed != [expected] or calls[0].keywords:
        return f"calls finish_job with {passed or 'nothing'}, the override takes {expected}"
    return None


def _run_job_does(what: str, *snippets: str) -> Pin:
    """A pin on arq's ``run_job``: its source (as ``ast.unparse`` writes it) holds each of ``snippets``."""

    def check(worker: ArqWorker) -> Problem:
        source = ast.unparse(source_tree(ArqWorker.run_job))
        missing = [snippet for snippet in snippets if snippet not in source]
        return f"no longer has {missing}" if missing else None

    return Pin(f"Worker.run_job {what}", check)


def _pool_property(worker: ArqWorker) -> Problem:
    return None if isinstance(inspect.getattr_static(ArqWorker, "pool", None), property) else "is not a property"


def subclass_names() -> set[str]:
    """What ``jobs.worker.Worker`` defines itself: its class members and what its ``__init__`` assigns."""
    init = source_tree(jobs.worker.Worker.__init__)
    assigned = {node.attr for node in self_attributes(init) if isinstance(node.ctx, ast.Store)}
    return set(vars(jobs.worker.Worker)) | assigned


def _no_name_clashes(worker: ArqWorker) -> Problem:
    clashes = sorted(
        name for name in subclass_names() - set(OVERRIDDEN) if not name.startswith("__") and hasattr(worker, name)
    )
    return f"arq's Worker now has {clashes} too" if clashes else None


async def _a_slot_per_job(worker: ArqWorker) -> Problem:
    for _ in range(worker.max_jobs):
        if worker.sem.locked():
            return "sem blocks before max_jobs jobs hold it (the worker's _start would wait)"
        await worker.sem.acquire()
        worker.job_counter += 1
    for _ in range(worker.max_jobs):
        worker._release_sem_dec_counter_on_complete()
    return None if worker.job_counter == 0 else "_release_sem_dec_counter_on_complete no longer counts the job out"


def _reach() -> tuple[set[str], set[str]]:
    """Method names and ``self`` attributes that the subclass's methods (and arq's entry points) can reach.

    ``self.x`` resolves on the subclass, as it does at run time, and ``super().x`` on arq.
    """
    roots = [value for value in vars(jobs.worker.Worker).values() if inspect.isfunction(value)]
    roots += [getattr(ArqWorker, name) for name in ("run", "async_run", "run_check")]
    seen: set[Any] = set()
    methods: set[str] = set()
    attributes: set[str] = set()
    while roots:
        function = roots.pop()
        if function in seen:
            continue
        seen.add(function)
        tree = source_tree(function)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
                callee = node.value.func
                if isinstance(callee, ast.Name) and callee.id == "super" and hasattr(ArqWorker, node.attr):
                    roots.append(getattr(ArqWorker, node.attr))
        for node in self_attributes(tree):
            if isinstance(node.ctx, ast.Load):
                attributes.add(node.attr)
            member = inspect.getattr_static(jobs.worker.Worker, node.attr, None)
            if isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member):
                methods.add(node.attr)
                roots.append(member)
    return methods, attributes


def _record_health_never_runs(worker: ArqWorker) -> Problem:
    methods, _ = _reach()
    if "record_health" in methods:
        return "is reachable: it would write arq's shared health-check key (arq's heart_beat must never be called)"
    return None


def _never_read(name: str, why: str) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        _, attributes = _reach()
        return f"is read on the worker's path: {why}" if name in attributes else None

    return Pin(f"Worker.{name} is never read", check)


# -- arq's job format and helpers ------------------------------------------------------------

_GONE = object()
# arq's key names and job expiry, as the Lua scripts and the stored data use them.
CONSTANTS = {
    "default_queue_name": "arq:queue",
    "job_key_prefix": "arq:job:",
    "in_progress_key_prefix": "arq:in-progress:",
    "result_key_prefix": "arq:result:",
    "retry_key_prefix": "arq:retry:",
    "abort_jobs_ss": "arq:abort",
    "expires_extra_ms": 86_400_000,
}


def _job_format(worker: ArqWorker) -> Problem:
    raw = arq.jobs.serialize_job("t.x", (), {"n": 1}, None, 1_000, serializer=serialize)
    if json.loads(raw) != {"t": None, "f": "t.x", "a": [], "k": {"n": 1}, "et": 1_000}:
        return f"writes {raw!r}; enqueue.lua, abort.lua and jobs.views read 'f' and 'et'"
    job = arq.jobs.deserialize_job(raw, deserializer=deserialize)
    if (job.function, job.enqueue_time) != ("t.x", datetime.fromtimestamp(1, UTC)):
        return f"deserialize_job reads {job}"
    return None


def _job_payload(worker: ArqWorker) -> Problem:
    """``job_payload`` (the enqueue path's) writes what ``serialize_job`` with ``serialize`` writes, byte for byte."""
    for task, kwargs in (("t.x", {}), ("webhook.deliver", {"url": "https://x/é", "payload": {"n": [1, 2.5, None]}})):
        ours = job_payload(task, to_json(kwargs), 1_764_412_800_123)
        theirs = arq.jobs.serialize_job(task, (), kwargs, None, 1_764_412_800_123, serializer=serialize)
        if ours != theirs:
            return f"serialize_job writes {theirs!r}, job_payload {ours!r}"
    return None


def _result_format(worker: ArqWorker) -> Problem:
    raw = arq.jobs.serialize_result(
        "t.x", (), {}, 2, 1_000, True, {"ok": 1}, 2_000, 3_000, "ref", "arq:queue", "id", serializer=serialize
    )
    written = json.loads(raw or b"{}")
    if set(written) != {"t", "f", "a", "k", "et", "s", "r", "st", "ft", "q", "id"}:
        return f"writes {sorted(written)}; abort.lua writes a result of the same shape"
    result = arq.jobs.deserialize_result(raw or b"", deserializer=deserialize)
    read = (result.function, result.job_try, result.success, result.result, result.start_time, result.finish_time)
    if read != ("t.x", 2, True, {"ok": 1}, datetime.fromtimestamp(2, UTC), datetime.fromtimestamp(3, UTC)):
        return f"deserialize_result reads {result}"
    return None


def _helpers(worker: ArqWorker) -> Problem:
    if not isinstance(arq.utils.timestamp_ms(), int) or arq.utils.to_ms(1.5) != 1500 or arq.utils.to_ms(None):
        return "timestamp_ms is not int epoch ms, or to_ms is not seconds to int ms (None stays None)"
    return None


async def _noop(ctx: dict[str, Any]) -> None:
    pass


def _func(worker: ArqWorker) -> Problem:
    function = arq.worker.func(_noop, name="n", timeout=2, max_tries=3, keep_result=4)
    found = (function.name, function.timeout_s, function.max_tries, function.keep_result_s)
    return None if found == ("n", 2, 3, 4) else f"func(name=, timeout=, max_tries=, keep_result=) gives {found}"


def _retry(worker: ArqWorker) -> Problem:
    defer_score = arq.worker.Retry(defer=1.5).defer_score
    return None if defer_score == 1500 else f"Retry(defer=1.5).defer_score is {defer_score!r}, expected 1500 ms"


def _arq_redis(worker: ArqWorker) -> Problem:
    pool = ArqRedis(ConnectionPool(), job_serializer=serialize, job_deserializer=deserialize, default_queue_name="q")
    found = (pool.job_serializer, pool.job_deserializer, pool.default_queue_name)
    return None if found == (serialize, deserialize, "q") else f"ArqRedis(...) keeps {found}"


def _log_redis_info(worker: ArqWorker) -> Problem:
    found = _parameters(arq.connections.log_redis_info)
    return None if found == ["redis", "log_func"] else f"takes {found}"


def _worker_logger(worker: ArqWorker) -> Problem:
    return None if arq.worker.logger.name == "arq.worker" else "arq.worker logs under another name"


# Every name the project imports from arq (tests and bench aside).
IMPORTED = {
    "arq.connections": ["ArqRedis", "log_redis_info"],
    "arq.constants": list(CONSTANTS),
    "arq.jobs": ["DeserializationError", "Deserializer", "Serializer", "deserialize_result", "serialize_job"],
    "arq.typing": ["WorkerCoroutine"],
    "arq.utils": ["timestamp_ms", "to_ms"],
    "arq.worker": ["Function", "Retry", "Worker", "func"],
}


def _imported(module: str, name: str) -> Pin:
    def check(worker: ArqWorker) -> Problem:
        found = getattr(importlib.import_module(module), name, _GONE)
        if found is _GONE:
            return "is gone"
        expected = CONSTANTS.get(name, found) if module == "arq.constants" else found
        return None if found == expected else f"is {found!r}: the Lua scripts and stored data use {expected!r}"

    return Pin(f"{module}.{name}", check)


PINS = [
    *(_state(name, kind) for name, kind in WORKER_STATE.items()),
    *(_call(name, parameters) for name, parameters in WORKER_CALLS.items()),
    Pin("Worker.pool", _pool_property),
    Pin("Worker: the subclass's own names are not arq's", _no_name_clashes),
    *(_override(name) for name in OVERRIDDEN),
    *(_option(field.name) for field in fields(WorkerSettings)),
    _option("redis_pool"),
    Pin("Worker.run_job calls finish_job with the override's 7 arguments", _run_job_calls_finish_job_as_overridden),
    _run_job_does("keeps the running task in job_tasks (where an abort cancels it)", "self.job_tasks[job_id] = "),
    _run_job_does("records a cancelled job in aborting_tasks as aborted", "job_id in self.aborting_tasks"),
    _run_job_does("gives the task ctx job_id and job_try", "'job_id': job_id", "'job_try': job_try"),
    _run_job_does("counts the try in arq:retry:<id> (finish.lua reads it)", "incr(retry_key_prefix + job_id)"),
    Pin("Worker.sem holds a slot per job", _a_slot_per_job),
    Pin("Worker.record_health never runs", _record_health_never_runs),
    _never_read("in_progress_timeout_s", "the worker's leases (JOB_LEASE_S) would have to set it"),
    _never_read("health_check_key", "arq would write or delete its shared health-check key"),
    Pin("arq.jobs job format", _job_format),
    Pin("arq.jobs job payload written by the enqueue path", _job_payload),
    Pin("arq.jobs result format", _result_format),
    Pin("arq.utils timestamp_ms and to_ms", _helpers),
    Pin("arq.worker.func options", _func),
    Pin("arq.worker.Retry(defer=)", _retry),
    Pin("arq.connections.ArqRedis options", _arq_redis),
    Pin("arq.connections.log_redis_info", _log_redis_info),
    Pin("arq.worker logger name", _worker_logger),
    *(_imported(module, name) for module, names in IMPORTED.items() for name in names),
]


async def _arq_worker() -> ArqWorker:
    """arq's own Worker, configured the way ``jobs.worker`` configures it (no connection is made)."""
    options = WorkerSettings(functions=TASKS.arq_functions(keep_result_s=60), max_jobs=4, keep_result=60)
    return ArqWorker(redis_pool=ArqRedis(ConnectionPool()), **options.arq_options())


async def problem_of(pin: Pin) -> Problem:
    try:
        outcome = pin.check(await _arq_worker())
        return await outcome if inspect.isawaitable(outcome) else outcome
    except Exception as exc:
        return f"raised {exc!r}"


async def arq_contract_violations() -> list[str]:
    """``"<pin>: <what is wrong>"`` for every pin the installed arq does not honour."""
    problems = [(pin.name, await problem_of(pin)) for pin in PINS]
    return [f"{name}: {problem}" for name, problem in problems if problem is not None]
