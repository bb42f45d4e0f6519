"""Queue benchmark: the project's worker against stock arq, side by side, in one run.

Each contender is one worker *process* on a private ``redis-server`` (TCP on loopback,
no persistence), so that ``INFO commandstats`` counts nothing but the contender and the
benchmark itself:

- ours: ``python -m jobs`` with default settings (JSON, leases, wake-ups; JSON logs), cron
  off (``bench/cron.py`` measures cron);
- stock: ``arq.worker.Worker`` with arq's defaults (pickle, 0.5 s poll, 10 jobs at a
  time) and arq's own INFO logging, one no-op function.

Measured:

1. no-op jobs/s from one worker process: ``N`` jobs are enqueued first, then the worker
   starts; the rate is ``N`` over the time from the first job's start to the last job's end
   (as the results record them), so start-up is not counted;
2. enqueue → start latency, p50 and p99, for jobs sent one at a time (each waits for the
   previous to finish, then a random 5-50 ms), from the times arq records in the result;
3. idle Redis commands per second per worker, server-side and client-sent: ``INFO
   commandstats`` deltas and a ``MONITOR`` tap over 60 s of an idle worker (both
   contenders at once, each on its own server);
4. Redis commands per job, counted two ways (``bench.redis_stats``): server-side, every
   command Redis ran, those its Lua scripts ran included (``INFO commandstats`` deltas over
   the throughput run); and client-sent, a script call counting once, as a metered Redis
   such as Upstash bills (a ``MONITOR`` tap, which marks a script's commands ``[0 lua]``,
   over a counting pass of ``COUNT_JOBS`` more jobs, because MONITOR would slow the timed
   run). At enqueue, and by the worker (its commands from its start until the queue is
   empty, over the jobs); the benchmark's own INFO, polling and connection set-up are left out;
5. ours only, default settings: a worker is SIGKILLed while running a job, a second
   worker is up; the time from the kill until the job starts again, and until it is
   complete. (Stock arq re-runs it only when ``arq:in-progress:<id>`` expires: the
   longest timeout of all functions + 10 s, 310 s with defaults; not waited for here.)

Prints a table and appends it to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging.config
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import deserialize_result
from arq.logs import default_log_config
from arq.worker import Worker, func
from redis.asyncio import Redis

from bench import harness
from bench.redis_stats import OWN_COMMANDS, Monitor, Window, command_calls, delta, per
from jobs.heartbeat import live_workers
from jobs.queue import JobQueue
from jobs.redis_keys import IN_PROGRESS_PREFIX, QUEUE_KEY, RESULT_PREFIX
from jobs.serialization import deserialize
from service.settings import Settings

THROUGHPUT_JOBS = 5000
COUNT_JOBS = 1000
LATENCY_JOBS = {"ours": 200, "stock": 60}
# The job running when its worker is killed: longer than a second worker takes to start on a
# busy machine (the kill waits for it), so that it is still running when the kill comes.
KILL_JOB_S = 5
IDLE_WINDOW_S = 60.0
# Commands the benchmark itself sends (zcard: waiting for the queue to empty), or that
# only connection set-up sends. The workers' GETs count: arq's reads each job with one.
NOT_COUNTED = OWN_COMMANDS | {"config", "client", "hello", "select", "flushdb", "ping", "zcard"}


# -- the stock worker (run as `python -m bench.queue stock-worker URL`) ---------------------


async def noop(ctx: dict[str, Any]) -> None:
    return None


def run_stock_worker(url: str) -> None:
    logging.config.dictConfig(default_log_config(verbose=False))

    async def main() -> None:
        worker = Worker([func(noop, name="noop")], redis_settings=RedisSettings.from_dsn(url))
        await worker.async_run()

    asyncio.run(main())


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free loopback port, no persistence; yields its URL."""
    with (
        tempfile.TemporaryDirectory(prefix="ottoai-bench-queue-") as tmp,
        harness.private_redis(Path(tmp), tcp=True) as url,
    ):
        yield url


def start_worker(kind: str, url: str) -> subprocess.Popen[bytes]:
    if kind == "ours":
        command = [sys.executable, "-m", "jobs"]
        env = {"REDIS_URL": url, "LOG_FORMAT": "json", "ENABLE_CRON": "false"}  # the queue alone (bench.cron: cron)
    else:
        command = [sys.executable, "-m", "bench.queue", "stock-worker", url]
        env = {}
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_URL")}
    return subprocess.Popen(
        command,
        cwd=harness.ROOT,
        env={**base, "PYTHONPATH": str(harness.ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    harness.stop(process, timeout_s=15)  # a worker may take its grace period


async def calls_by_command(redis: Redis) -> dict[str, int]:
    return command_calls(await redis.info("commandstats"))


def counted(before: dict[str, int], after: dict[str, int], ignore: frozenset[str] = NOT_COUNTED) -> int:
    return sum(delta(before, after, ignore).values())


@dataclass
class Contender:
    kind: str
    url: str
    redis: Redis
    enqueue: Callable[[], Awaitable[str]]
    deserializer: Callable[[bytes], dict[str, Any]] | None


def contender(kind: str, url: str) -> Contender:
    if kind == "ours":
        redis = ArqRedis.from_url(url)
        # One tenant enqueues the whole throughput batch before the worker starts: above its default cap.
        queue = JobQueue(redis, Settings.from_env({"REDIS_URL": url, "JOB_UNFINISHED_MAX": str(THROUGHPUT_JOBS)}))

        async def enqueue_ours() -> str:
            view, _ = await queue.enqueue("bench", "diagnostics.ping", {})
            return view.id

        return Contender(kind, url, redis, enqueue_ours, deserialize)
    pool = ArqRedis.from_url(url)

    async def enqueue_stock() -> str:
        job = await pool.enqueue_job("noop")
        assert job is not None
        return str(job.job_id)

    return Contender(kind, url, pool, enqueue_stock, None)


# -- the measurements -------------------------------------------------------------------------


async def throughput(c: Contender) -> dict[str, float]:
    await c.redis.flushdb()
    before = await calls_by_command(c.redis)
    ids = []
    for _ in range(THROUGHPUT_JOBS // 100):
        ids += await asyncio.gather(*(c.enqueue() for _ in range(100)))
    enqueued = await calls_by_command(c.redis)
    worker = start_worker(c.kind, c.url)
    try:
        deadline = time.monotonic() + 120
        while await c.redis.zcard(QUEUE_KEY) > 0:
            assert time.monotonic() < deadline, f"{c.kind}: jobs left after 120 s"
            await asyncio.sleep(0.05)
        drained = await calls_by_command(c.redis)
    finally:
        stop_worker(worker)
    starts, ends = [], []
    for chunk in range(0, len(ids), 500):
        for raw in await c.redis.mget([RESULT_PREFIX + job_id for job_id in ids[chunk : chunk + 500]]):
            result = deserialize_result(raw, deserializer=c.deserializer)
            starts.append(result.start_time.timestamp())
            ends.append(result.finish_time.timestamp())
    return {
        "jobs_per_s": len(ids) / (max(ends) - min(starts)),
        "enqueue_commands_per_job": counted(before, enqueued) / len(ids),
        "worker_commands_per_job": counted(enqueued, drained) / len(ids),
    }


async def _result(redis: Redis, job_id: str) -> bytes:
    while True:
        raw: bytes | None = await redis.get(RESULT_PREFIX + job_id)
        if raw is not None:
            return raw
        await asyncio.sleep(0.001)


async def latency(c: Contender) -> dict[str, float]:
    await c.redis.flushdb()
    worker = start_worker(c.kind, c.url)
    samples = []
    try:
        await asyncio.sleep(3.0)  # start-up
        for _ in range(LATENCY_JOBS[c.kind]):
            await asyncio.sleep(random.uniform(0.005, 0.05))
            job_id = await c.enqueue()
            result = deserialize_result(await _result(c.redis, job_id), deserializer=c.deserializer)
            samples.append((result.start_time - result.enqueue_time).total_seconds() * 1000)
    finally:
        stop_worker(worker)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": statistics.median(samples), "p99_ms": cuts[98], "samples": len(samples)}


async def idle(c: Contender) -> dict[str, float]:
    await c.redis.flushdb()
    worker = start_worker(c.kind, c.url)
    try:
        await asyncio.sleep(5.0)  # start-up is not idle
        before = await calls_by_command(c.redis)
        with Monitor(c.url) as monitor:  # an idle worker sends too little for the tap to slow it
            await asyncio.sleep(IDLE_WINDOW_S)
            window = monitor.mark()
        after = await calls_by_command(c.redis)
    finally:
        stop_worker(worker)
    # Everything the worker sends counts here, whatever the command.
    return {
        "idle_commands_per_s": counted(before, after, ignore=OWN_COMMANDS) / IDLE_WINDOW_S,
        "idle_client_commands_per_s": window.client_total / IDLE_WINDOW_S,
    }


async def command_sources(c: Contender) -> dict[str, Any]:
    """Commands per job as clients send them, and as Redis runs them: ``COUNT_JOBS`` jobs under a MONITOR tap."""
    await c.redis.flushdb()
    with Monitor(c.url) as monitor:
        for _ in range(COUNT_JOBS // 100):
            await asyncio.gather(*(c.enqueue() for _ in range(100)))
        enqueue = monitor.mark().without(NOT_COUNTED)
        worker = start_worker(c.kind, c.url)
        try:
            await _until(lambda: _empty(c.redis), timeout_s=120)
            work = monitor.mark().without(NOT_COUNTED)
        finally:
            stop_worker(worker)
    return {
        "enqueue_client_per_job": enqueue.client_total / COUNT_JOBS,
        "enqueue_monitored_per_job": enqueue.server_total / COUNT_JOBS,
        "worker_client_per_job": work.client_total / COUNT_JOBS,
        "worker_monitored_per_job": work.server_total / COUNT_JOBS,
        "enqueue_window": enqueue,
        "worker_window": work,
    }


async def _empty(redis: Redis) -> bool:
    left: int = await redis.zcard(QUEUE_KEY)
    return left == 0


async def _until(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("bench.queue: gave up waiting")
        await asyncio.sleep(0.005)


async def _live(redis: Redis, count: int) -> bool:
    return len(await live_workers(redis)) >= count


async def kill_recovery(url: str) -> dict[str, float]:
    """SIGKILL the worker running a job while another is idle; seconds until it runs again."""
    c = contender("ours", url)
    await c.redis.flushdb()
    first = start_worker("ours", url)
    second: subprocess.Popen[bytes] | None = None
    try:
        await _until(lambda: _live(c.redis, 1))
        # The first worker is alone: it takes the job.
        sleeper, _ = await JobQueue(c.redis, Settings.from_env({"REDIS_URL": url})).enqueue(
            "bench", "diagnostics.sleep", {"seconds": KILL_JOB_S}
        )
        await _until(lambda: c.redis.exists(IN_PROGRESS_PREFIX + sleeper.id))
        second = start_worker("ours", url)
        await _until(lambda: _live(c.redis, 2))
        first.kill()
        killed_ms = time.time() * 1000
        result = deserialize_result(await _result(c.redis, sleeper.id), deserializer=c.deserializer)
        if result.job_try < 2:
            raise RuntimeError(f"the {KILL_JOB_S} s job ended before its worker was killed: raise KILL_JOB_S")
    finally:
        for process in (first, second):
            if process is not None:
                stop_worker(process)
        await c.redis.aclose()
    return {
        "kill_to_restart_s": (result.start_time.timestamp() * 1000 - killed_ms) / 1000,
        "kill_to_complete_s": (result.finish_time.timestamp() * 1000 - killed_ms) / 1000,
        "tries": float(result.job_try),
    }


async def measure() -> tuple[dict[str, dict[str, Any]], str]:
    """Every figure of both contenders, and the machine line (taken before the run)."""
    figures: dict[str, dict[str, Any]] = {"ours": {}, "stock": {}}
    with private_redis() as url_a, private_redis() as url_b:
        pairs = {"ours": contender("ours", url_a), "stock": contender("stock", url_b)}
        machine = harness.machine((await pairs["ours"].redis.info("server"))["redis_version"])
        for kind, c in pairs.items():
            print(f"queue bench: {kind} throughput ...", flush=True)
            figures[kind].update(await throughput(c))
            print(f"queue bench: {kind} latency ...", flush=True)
            figures[kind].update(await latency(c))
            print(f"queue bench: {kind} commands by source, {COUNT_JOBS:,} jobs under MONITOR ...", flush=True)
            figures[kind].update(await command_sources(c))
        print(f"queue bench: idle, both at once, {IDLE_WINDOW_S:g} s ...", flush=True)
        idle_ours, idle_stock = await asyncio.gather(idle(pairs["ours"]), idle(pairs["stock"]))
        figures["ours"].update(idle_ours)
        figures["stock"].update(idle_stock)
        print("queue bench: SIGKILL recovery (ours, default 10 s lease) ...", flush=True)
        figures["ours"].update(await kill_recovery(url_a))
        for c in pairs.values():
            await c.redis.aclose()
    return figures, machine


def report(figures: dict[str, dict[str, Any]], machine: str) -> str:
    ours, stock = figures["ours"], figures["stock"]
    rows = [
        ("no-op jobs/s, one worker process", "jobs_per_s", "{:,.0f}", "x"),
        ("enqueue → start p50 (ms), one at a time", "p50_ms", "{:,.1f}", "/"),
        ("enqueue → start p99 (ms), one at a time", "p99_ms", "{:,.1f}", "/"),
        ("idle Redis commands/s per worker, server-side", "idle_commands_per_s", "{:.3f}", "/"),
        ("idle Redis commands/s per worker, client-sent", "idle_client_commands_per_s", "{:.3f}", "/"),
        ("Redis commands per job: enqueue, server-side", "enqueue_commands_per_job", "{:.1f}", ""),
        ("Redis commands per job: enqueue, client-sent", "enqueue_client_per_job", "{:.1f}", ""),
        ("Redis commands per job: worker, server-side", "worker_commands_per_job", "{:.1f}", ""),
        ("Redis commands per job: worker, client-sent", "worker_client_per_job", "{:.1f}", ""),
        (f"SIGKILL mid-job ({KILL_JOB_S} s job) → job runs again (s)", "kill_to_restart_s", "{:.1f}", "-"),
        (f"SIGKILL mid-job ({KILL_JOB_S} s job) → job complete (s)", "kill_to_complete_s", "{:.1f}", "-"),
    ]
    lines = [
        f"## Queue, {harness.now_utc()}",
        "",
        f"Machine: {machine}. One worker process per contender, each on a private redis-server (TCP loopback, "
        f"no persistence). Stock arq: `arq.worker.Worker` defaults (pickle, 0.5 s poll, max_jobs 10). Ours: "
        f"`python -m jobs` with default settings, cron off. Throughput: {THROUGHPUT_JOBS:,} jobs enqueued first. "
        f"Latency: "
        f"{LATENCY_JOBS['ours']} (ours) / {LATENCY_JOBS['stock']} (stock) jobs one at a time, from the times arq "
        f"records (1 ms resolution). Idle: INFO commandstats delta and a MONITOR tap over {IDLE_WINDOW_S:g} s. "
        "Commands per job: server-side is every command Redis ran, those its Lua scripts ran included (INFO "
        "commandstats over the throughput run); client-sent counts a script call once, as a metered Redis bills "
        f"(a MONITOR tap, which marks a script's commands `[0 lua]`, over a separate pass of {COUNT_JOBS:,} jobs); "
        "the benchmark's own commands and connection set-up are left out.",
        "",
        "| measure | ours | stock arq | ours vs stock |",
        "|---|---|---|---|",
    ]
    for label, key, fmt, compare in rows:
        if compare == "-":
            lines.append(f"| {label} | {fmt.format(ours[key])} | ~310 (in-progress TTL; not measured) | |")
            continue
        ratio = ""
        if compare == "x" and stock[key]:
            ratio = f"{ours[key] / stock[key]:.1f} x"
        elif compare == "/" and ours[key]:
            ratio = f"{stock[key] / ours[key]:.1f} x less"
        lines.append(f"| {label} | {fmt.format(ours[key])} | {fmt.format(stock[key])} | {ratio} |")
    lines += ["", "Commands per job by name in the MONITOR pass (its server-side totals beside the table's):", ""]
    for kind, name in (("ours", "ours"), ("stock", "stock arq")):
        f = figures[kind]
        for phase in ("enqueue", "worker"):
            window: Window = f[f"{phase}_window"]
            lines.append(
                f"- {name}, {phase}: client-sent {per(window.client, COUNT_JOBS, top=10)}; run by scripts "
                f"{per(window.script, COUNT_JOBS, top=10)} (server-side {f[f'{phase}_monitored_per_job']:.1f} a job)."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the queue benchmark, print its table and append it to bench/RESULTS.md."""
    figures, machine = asyncio.run(measure())
    section = report(figures, machine)
    print(section)
    harness.append_results(section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.queue")
    parser.add_argument("command", nargs="?", choices=["run", "stock-worker"], default="run")
    parser.add_argument("url", nargs="?")
    cli = parser.parse_args()
    if cli.command == "stock-worker":
        run_stock_worker(cli.url)
    else:
        main()
