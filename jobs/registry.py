"""How a task declares itself: argument schema, timeout, tries and backoff.

``Registry.task(...)`` registers an ``async def`` that takes a ``JobContext`` and the
task's arguments as keywords. The web process validates arguments with the same schema
at enqueue (so bad ones are a 422, not a failed job); the worker runs the task inside a
wrapper that applies the timeout and turns failures into arq retries with exponential
backoff and full jitter, until the task's tries are spent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from arq.typing import WorkerCoroutine
from arq.worker import Function, Retry, func
from marshmallow import Schema, ValidationError
from redis.asyncio import Redis

from jobs.metrics import JobMetrics, Outcome
from jobs.redis_keys import SYSTEM_TENANT
from jobs.serialization import error_of, to_json
from service.backoff import Backoff
from service.logging import bind_context, get_logger
from service.settings import Settings

__all__ = [
    "ArgumentCheck",
    "EnqueueContext",
    "InvalidArguments",
    "JobContext",
    "JobTimeout",
    "PermanentError",
    "Registry",
    "ResultTooLarge",
    "RetryLater",
    "Task",
    "TryEnd",
    "UnknownTask",
    "arq_function",
    "runner",
]

log = get_logger(__name__)

# arq's own timeout is a backstop behind the wrapper's; this much later.
_ARQ_TIMEOUT_MARGIN_S = 5.0


class PermanentError(Exception):
    """A failure that another try cannot fix: the job fails at once."""


class RetryLater(Exception):
    """A transient failure whose remedy says when to try again (HTTP ``Retry-After``)."""

    def __init__(self, message: str, after_s: float | None = None) -> None:
        super().__init__(message)
        self.after_s = after_s


class JobTimeout(Exception):
    """The task ran past its timeout."""


class ResultTooLarge(PermanentError):
    """The task's result is larger than ``JOB_RESULT_MAX_BYTES`` as JSON: it is not stored, the failure is."""


class UnknownTask(LookupError):
    """No task has this name."""


class InvalidArguments(ValueError):
    """Arguments that do not match the task's schema; ``errors`` maps fields to messages."""

    def __init__(self, errors: Mapping[str, Any]) -> None:
        super().__init__("invalid arguments")
        self.errors = dict(errors)


@dataclass(frozen=True)
class JobContext:
    """What a running task knows about its job and its worker."""

    job_id: str
    task: str
    tenant: str
    try_number: int
    max_tries: int
    worker_id: str
    settings: Settings
    redis: Redis


@dataclass(frozen=True)
class TryEnd:
    """How one try of a job ended, as its runner saw it: the worker's finish records it (``jobs.failures``)."""

    task: str
    outcome: Outcome
    try_number: int
    max_tries: int
    error: dict[str, str] | None  # of a failed try: the error that ended it, as the jobs API shows errors


class EnqueueContext(NamedTuple):
    """What an enqueue-time argument check may consult: the calling tenant, the deployment and its Redis.

    A named tuple: every enqueue makes one, and a frozen dataclass costs five times as much to make.
    """

    tenant: str
    settings: Settings
    redis: Redis


# An asynchronous test of a task's loaded arguments beyond its schema; raises ``InvalidArguments``.
ArgumentCheck = Callable[[dict[str, Any], EnqueueContext], Awaitable[None]]


@dataclass(frozen=True)
class Task:
    """A registered task.

    ``check`` is an optional asynchronous test of arguments beyond the schema (a webhook's
    host, say); it raises ``InvalidArguments`` and runs at enqueue. What can change between
    enqueue and run (DNS, say) the task checks again itself. An ``internal`` task (the
    maintenance jobs) runs only from the cron schedule or an operator's run-now: to a tenant
    it is unknown.
    """

    name: str
    run: Callable[..., Awaitable[Any]]
    schema: Schema
    timeout_s: float
    max_tries: int
    backoff: Backoff
    check: ArgumentCheck | None = None
    internal: bool = False
    # The schema declares no field and no hook: ``{}`` is then all it loads, as ``{}``, and ``load``
    # answers that without marshmallow (about 3 µs of a no-argument enqueue, more under load).
    takes_nothing: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = self.schema
        hooks = any(schema._hooks.values())  # pre_load, post_load, validates_schema (and their dump kin)
        object.__setattr__(self, "takes_nothing", not schema.many and not schema.fields and not hooks)

    def load(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.takes_nothing and type(args) is dict and not args:
            return {}
        try:
            loaded: dict[str, Any] = self.schema.load(args)
        except ValidationError as exc:
            messages = exc.messages
            raise InvalidArguments(messages if isinstance(messages, dict) else {"_schema": messages}) from None
        return loaded


class Registry:
    """The tasks a deployment knows, by name."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        for task in tasks:
            self.add(task)

    def task(
        self,
        name: str,
        *,
        schema: Schema,
        timeout_s: float,
        max_tries: int = 3,
        backoff: Backoff = Backoff(),
        check: ArgumentCheck | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Register the decorated ``async def f(job: JobContext, **args)`` as ``name``."""

        def register(run: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.add(Task(name, run, schema, timeout_s, max_tries, backoff, check))
            return run

        return register

    def add(self, task: Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} is already registered")
        if task.max_tries < 1 or task.timeout_s <= 0:
            raise ValueError(f"task {task.name!r}: max_tries must be >= 1 and timeout_s > 0")
        self._tasks[task.name] = task

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name) from None

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    async def validate(self, name: str, args: Mapping[str, Any], context: EnqueueContext) -> Task:
        """The task ``name`` if a tenant may enqueue it with ``args``; ``UnknownTask`` (also for an
        internal task) or ``InvalidArguments`` otherwise."""
        task = self[name]
        if task.internal:
            raise UnknownTask(name)
        loaded = task.load(args)
        if task.check is not None:
            await task.check(loaded, context)
        return task

    def arq_functions(self, *, keep_result_s: float) -> list[Function]:
        """Every task as an arq function, wrapped in its timeout and retry policy."""
        return [arq_function(task, keep_result_s=keep_result_s) for task in self]


def _check_result(result: Any, limit: int) -> None:
    """Fail the job, keeping its record small, when its result is not strict JSON or is too large to store."""
    try:
        size = len(to_json(result))
    except (TypeError, ValueError, RecursionError) as exc:
        raise PermanentError(f"the result is not JSON: {exc}") from None
    if size > limit:
        raise ResultTooLarge(f"the result is {size:,} bytes as JSON; the limit is {limit:,} (JOB_RESULT_MAX_BYTES)")


def arq_function(
    task: Task, *, keep_result_s: float, name: str | None = None, run: Callable[..., Awaitable[Any]] | None = None
) -> Function:
    """``task`` as an arq function: ``run`` (by default ``runner(task)``) under the task's timeout and tries."""
    return func(
        cast(WorkerCoroutine, run or runner(task)),
        name=name or task.name,
        timeout=task.timeout_s + _ARQ_TIMEOUT_MARGIN_S,
        max_tries=task.max_tries,
        keep_result=keep_result_s,
    )


def runner(task: Task) -> Callable[..., Awaitable[Any]]:
    """The arq coroutine that runs ``task``: ``run(ctx, **args)`` with its timeout, retries and metrics."""

    async def run(ctx: dict[str, Any], **args: Any) -> Any:
        job = JobContext(
            job_id=ctx["job_id"],
            task=task.name,
            tenant=ctx["tenants"].get(ctx["job_id"], SYSTEM_TENANT),
            try_number=ctx["job_try"],
            max_tries=task.max_tries,
            worker_id=ctx["worker_id"],
            settings=ctx["settings"],
            redis=ctx["redis"],
        )
        bind_context(job_id=job.job_id, task=task.name)
        metrics: JobMetrics | None = ctx.get("job_metrics")
        started = time.perf_counter()
        outcome: Outcome = "failed"
        error: BaseException | None = None
        try:
            result = await _attempt(task, job, args)
            outcome = "complete"
            return result
        except Retry as retry:
            outcome = "retried"
            error = retry.__cause__
            raise
        except asyncio.CancelledError:
            outcome = metrics.cancelled_outcome(job.job_id) if metrics is not None else "retried"
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            if metrics is not None:
                metrics.record(task.name, outcome, time.perf_counter() - started)
            ends: dict[str, TryEnd] | None = ctx.get("try_ends")
            if ends is not None:  # the worker's finish of this try takes it
                failure = error_of(error) if error is not None else None
                ends[job.job_id] = TryEnd(task.name, outcome, job.try_number, task.max_tries, failure)

    run.__qualname__ = task.name
    return run


async def _attempt(task: Task, job: JobContext, args: dict[str, Any]) -> Any:
    """One try of ``task``: its result, or ``Retry`` with the task's backoff, or the error that ends the job."""
    try:
        loaded = task.load(args)
    except InvalidArguments as exc:
        raise PermanentError(f"arguments no longer valid: {exc.errors}") from None
    try:
        async with asyncio.timeout(task.timeout_s) as scope:
            result = await task.run(job, **loaded)
    except PermanentError:
        raise
    except Exception as exc:
        error: Exception = exc
        if scope.expired():
            error = JobTimeout(f"{task.name} did not finish within {task.timeout_s:g} s")
        if job.try_number >= task.max_tries:
            if error is exc:
                raise
            raise error from exc
        delay_s = task.backoff.delay_s(job.try_number)
        if isinstance(exc, RetryLater) and exc.after_s is not None:
            delay_s = exc.after_s
        log.info("job will be retried", try_number=job.try_number, delay_s=round(delay_s, 3), error=str(error))
        raise Retry(defer=delay_s) from error  # the error the try is known by (a timeout's is JobTimeout)
    _check_result(result, job.settings.job_result_max_bytes)
    return result  # the worker logs "job complete" once the result is recorded
