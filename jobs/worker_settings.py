"""arq's ``WorkerSettings``: the options of arq's ``Worker``, filled from the deployment's ``Settings``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from arq.jobs import Deserializer, Serializer
from arq.worker import Function

from jobs import redis_keys
from jobs.cron import Schedule
from jobs.cron_runner import arq_functions
from jobs.registry import Registry
from jobs.serialization import deserialize, serialize
from jobs.tasks import TASKS
from service.settings import Settings

__all__ = ["WorkerSettings"]


@dataclass(frozen=True)
class WorkerSettings:
    """arq's ``WorkerSettings``: the options of arq's ``Worker``, under arq's names.

    ``from_settings`` fills the per-deployment ones from ``Settings``; the worker passes
    every field, and nothing else, to arq's ``Worker`` (beside its Redis pool).
    """

    functions: Sequence[Function]
    max_jobs: int
    keep_result: float
    burst: bool = False
    queue_name: str = redis_keys.QUEUE_KEY
    job_serializer: Serializer = serialize
    job_deserializer: Deserializer = deserialize
    allow_abort_jobs: bool = True
    # ``stop`` ends a worker (``python -m jobs`` calls it on SIGTERM and SIGINT) and hands its jobs back.
    handle_signals: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, registry: Registry = TASKS, schedule: Schedule | None = None, **options: Any
    ) -> WorkerSettings:
        """The options of a worker running ``registry``'s tasks and, when given, the cron ``schedule``;
        ``options`` set other fields (``burst``, ...)."""
        cron = arq_functions(schedule, registry) if schedule is not None else []
        return cls(
            functions=[*registry.arq_functions(keep_result_s=settings.job_retention_s), *cron],
            max_jobs=settings.worker_concurrency,
            keep_result=settings.job_retention_s,
            **options,
        )

    def arq_options(self) -> dict[str, Any]:
        """The keyword arguments of arq's ``Worker``."""
        return {field.name: getattr(self, field.name) for field in fields(self)}
