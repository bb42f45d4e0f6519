"""Recording the end of a job's run: only under this worker's lease, and trying until Redis answers.

Each claim writes a token of its own into the job's lease (``claim.lua``: ``"<now ms>:<worker
id>"``); the ``Finisher`` keeps it while the job runs (``held``), and ``finish.lua`` records a
result, or puts the job back in the queue, only while the lease still holds that token. A
job whose lease ran out (a stalled worker, Redis away longer than a lease) may have been
claimed by another worker since: this one records nothing, and the job runs, and
completes, once, where it is claimed.

A finish that cannot reach Redis tries again with the reconnect backoff until it can, as
long as the worker runs; a stopping worker gives up at a deadline (``give_up_at``) and the
job's lease runs out by itself. ``job complete`` is logged once the result is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from arq.jobs import Deserializer, deserialize_result
from arq.utils import timestamp_ms, to_ms
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs import failures, redis_keys
from jobs.cron import is_cron_run
from jobs.metrics import Outcome
from jobs.outage import Outage
from jobs.registry import TryEnd
from jobs.scripts import load_script
from jobs.serialization import ABORTED, deserialize, stored_error
from service.backoff import Backoff
from service.logging import get_logger

__all__ = ["Finisher", "never_started"]

log = get_logger(__name__)


class Finisher:
    """One worker's leases held, and the recording of its jobs' ends (``finish.lua``).

    ``look_again`` wakes the worker's main loop: a job it let go may be claimable again.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        outage: Outage,
        backoff: Backoff,
        deserializer: Deserializer,
        look_again: Callable[[], Awaitable[None]],
    ) -> None:
        # job id -> the value of its lease as this worker claimed it, until its run is recorded
        self.held: dict[str, str] = {}
        # jobs being handed back on stop: their interrupted try is not counted
        self.handing_back: set[str] = set()
        self._queue_name = queue_name
        self._outage = outage
        self._backoff = backoff
        self._deserializer = deserializer
        self._look_again = look_again
        self._script = load_script(redis, "finish", include=["leave_queue", "wake"])
        self._recording: set[asyncio.Task[Any]] = set()
        self._give_up_at: float | None = None

    def let_go(self, job_id: str, lease: str | None = None) -> None:
        """The job's lease (``lease``, when given: only that one) is no longer this worker's: nothing
        will be recorded under it."""
        if lease is None or self.held.get(job_id) == lease:
            self.held.pop(job_id, None)

    def give_up_at(self, deadline: float) -> None:
        """From now on (stopping), a finish that cannot reach Redis gives up at ``deadline`` (monotonic)."""
        self._give_up_at = deadline

    async def wait(self, timeout_s: float) -> None:
        """Wait for the finishes in flight (arq shields them from a cancelled job)."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=timeout_s)

    async def record(
        self,
        job_id: str,
        tenant: str,
        finish: bool,
        result_data: bytes | None,
        *,
        keep_result_s: float | None,
        incr_score: int | None,
        keep_in_progress_s: float | None,
        end: TryEnd | None,
    ) -> None:
        """Run ``finish.lua`` for one run of ``tenant``'s ``job_id`` (``finish``: its result, else requeue it),
        with arq's ``finish_job`` arguments (``keep_result_s`` None: kept for ever).

        How the try ended (``end``, from its runner) is added to the minute's counts and, a failed
        try, listed (``jobs.failures``), both only when recorded.
        """
        held = self.held.get(job_id)
        if held is None:
            log.warning("job result not recorded: its lease was lost; it runs again elsewhere", job_id=job_id)
            await self._look_again()
            return
        counted, failure = _what_ended(job_id, tenant, end)
        task = asyncio.current_task()
        assert task is not None
        self._recording.add(task)
        try:
            recorded = await self._run_script(
                job_id,
                tenant,
                [
                    job_id,
                    "1" if finish else "0",
                    result_data or "",
                    "" if keep_result_s is None else to_ms(keep_result_s),
                    incr_score or "",
                    "" if keep_in_progress_s is None else to_ms(keep_in_progress_s),
                    "1" if job_id in self.handing_back else "0",
                    redis_keys.WAKE_TOKENS_MAX,
                    tenant,
                    counted,
                    redis_keys.MINUTE_STATS_TTL_S,
                    failure,
                    redis_keys.FAILURES_KEPT,
                    held,
                ],
            )
        finally:
            self._recording.discard(task)
            self.let_go(job_id, held)  # only this run's lease: a new claim of the job may hold another by now
        if recorded is None:
            log.warning("job result not recorded: redis unreachable while stopping; it runs again", job_id=job_id)
        elif not recorded:
            log.warning("job result not recorded: its lease ran out meanwhile; it runs again elsewhere", job_id=job_id)
            await self._look_again()
        elif finish:
            self.log_if_complete(job_id, result_data)
        else:
            # Requeued (a retry, a hand-back). Its wake-up token may already have woken this worker,
            # whose claim then passed the job by as still held (claim.lua skips this worker's own
            # leases): without another look it would wait for the next enqueue or the idle poll.
            await self._look_again()

    def log_if_complete(self, job_id: str, result_data: bytes | None) -> None:
        """Log ``job complete`` for a recorded run that succeeded (once it is recorded: never twice)."""
        if not result_data:
            return
        result = deserialize_result(result_data, deserializer=self._deserializer)
        if result.success:
            duration_ms = (result.finish_time - result.start_time).total_seconds() * 1000
            log.info(
                "job complete",
                job_id=job_id,
                task=result.function,
                try_number=result.job_try,
                duration_ms=round(duration_ms, 2),
            )

    async def _run_script(self, job_id: str, tenant: str, args: list[Any]) -> bool | None:
        """``finish.lua``'s answer (recorded or not), or ``None`` when a stopping worker gave up on Redis."""
        failures = 0
        while True:
            try:
                recorded = await self._script(
                    keys=[
                        redis_keys.IN_PROGRESS_PREFIX + job_id,
                        redis_keys.RESULT_PREFIX + job_id,
                        redis_keys.RETRY_PREFIX + job_id,
                        redis_keys.JOB_PREFIX + job_id,
                        redis_keys.ABORT_KEY,
                        self._queue_name,
                        redis_keys.WAKE_KEY,
                        redis_keys.ready_key(tenant),
                        redis_keys.TENANTS_KEY,
                        redis_keys.minute_stats_key(int(time.time() // 60)),
                        redis_keys.FAILURES_KEY,
                    ],
                    args=args,
                )
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
                failures += 1
                delay_s = self._backoff.delay_s(failures)
                if self._give_up_at is not None and time.monotonic() + delay_s > self._give_up_at:
                    return None
                await asyncio.sleep(delay_s)
            else:
                self._outage.succeeded()
                return bool(recorded)


class _Function(Protocol):
    """arq's ``Function`` or ``CronJob``, as far as ``never_started`` reads it."""

    @property
    def max_tries(self) -> int | None: ...


def never_started(result_data: bytes, functions: Mapping[str, _Function]) -> TryEnd:
    """How a job that never started ended (it expired, was aborted before it started, or ran out of
    tries), from the result arq wrote for it; ``functions``: the worker's, by name."""
    ended = deserialize_result(result_data, deserializer=deserialize)
    aborted = isinstance(ended.result, dict) and ended.result.get("type") == ABORTED
    outcome: Outcome = "aborted" if aborted else "failed"
    tries = int(ended.job_try or 0)
    function = functions.get(ended.function)
    max_tries = function.max_tries if function is not None and function.max_tries else tries
    return TryEnd(ended.function, outcome, tries, max_tries, None if aborted else stored_error(ended.result))


def _what_ended(job_id: str, tenant: str, end: TryEnd | None) -> tuple[str, str]:
    """What ``finish.lua`` adds for this end of a try: the outcome it counts for the minute ("": none,
    for a hand-back or a cron run) and the failed try it lists (JSON, or "": none, or a job no tenant
    enqueued, which no operator can enqueue again)."""
    if end is None or end.outcome == "handed_back" or is_cron_run(job_id):
        return "", ""
    failure = ""
    if end.error is not None and tenant != redis_keys.SYSTEM_TENANT:
        failure = failures.failed_try(
            job_id=job_id,
            task=end.task,
            tenant=tenant,
            error=end.error,
            try_number=end.try_number,
            max_tries=end.max_tries,
            will_retry=end.outcome == "retried",
            at_ms=timestamp_ms(),
        )
    return end.outcome, failure
