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
3. idle Redis commands per second per worker: ``INFO commandstats`` deltas over 60 s of
   an idle worker (both contenders at once, each on its own server);
4. Redis commands per job in the throughput run: at enqueue, and by the worker (its
   commands during the run over ``N``; the benchmark's own INFO and polling are left out);
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
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import deserialize_result
from arq.logs import default_log_config
from arq.worker import Worker, func
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from jobs.queue import JobQueue
from jobs.redis_keys import IN_PROGRESS_PREFIX, QUEUE_KEY, RESULT_PREFIX
from jobs.serialization import deserialize
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
THROUGHPUT_JOBS = 5000
LATENCY_JOBS = {"ours": 200, "stock": 60}
IDLE_WINDOW_S = 60.0
# Commands the benchmark itself sends, or that only connection set-up sends.
NOT_COUNTED = {"info", "config", "client", "hello", "select", "flushdb", "ping", "zcard", "mget", "get"}


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
    """A throw-away redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench.queue needs redis-server on PATH (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


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
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def counted(before: dict[str, int], after: dict[str, int], ignore: set[str] = NOT_COUNTED) -> int:
    return sum(calls - before.get(name, 0) for name, calls in after.items() if name not in ignore)


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
        queue = JobQueue(redis, Settings.from_env({"REDIS_URL": url}))

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
    before = await command_calls(c.redis)
    ids = []
    for _ in range(THROUGHPUT_JOBS // 100):
        ids += await asyncio.gather(*(c.enqueue() for _ in range(100)))
    enqueued = await command_calls(c.redis)
    worker = start_worker(c.kind, c.url)
    try:
        deadline = time.monotonic() + 120
        while await c.redis.zcard(QUEUE_KEY) > 0:
            assert time.monotonic() < deadline, f"{c.kind}: jobs left after 120 s"
            await asyncio.sleep(0.05)
        drained = await command_calls(c.redis)
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


async def idle(c: Contender) -> float:
    await c.redis.flushdb()
    worker = start_worker(c.kind, c.url)
    try:
        await asyncio.sleep(5.0)  # start-up is not idle
        before = await command_calls(c.redis)
        await asyncio.sleep(IDLE_WINDOW_S)
        after = await command_calls(c.redis)
    finally:
        stop_worker(worker)
    # Everything the worker sends counts here, whatever the command.
    return counted(before, after, ignore={"info"}) / IDLE_WINDOW_S


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
            "bench", "diagnostics.sleep", {"seconds": 1}
        )
        await _until(lambda: c.redis.exists(IN_PROGRESS_PREFIX + sleeper.id))
        second = start_worker("ours", url)
        await _until(lambda: _live(c.redis, 2))
        first.kill()
        killed_ms = time.time() * 1000
        result = deserialize_result(await _result(c.redis, sleeper.id), deserializer=c.deserializer)
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


async def measure() -> tuple[dict[str, dict[str, float]], str]:
    figures: dict[str, dict[str, float]] = {"ours": {}, "stock": {}}
    with private_redis() as url_a, private_redis() as url_b:
        pairs = {"ours": contender("ours", url_a), "stock": contender("stock", url_b)}
        version = (await pairs["ours"].redis.info("server"))["redis_version"]
        for kind, c in pairs.items():
            print(f"queue bench: {kind} throughput ...", flush=True)
            figures[kind].update(await throughput(c))
            print(f"queue bench: {kind} latency ...", flush=True)
            figures[kind].update(await latency(c))
        print(f"queue bench: idle, both at once, {IDLE_WINDOW_S:g} s ...", flush=True)
        idle_ours, idle_stock = await asyncio.gather(idle(pairs["ours"]), idle(pairs["stock"]))
        figures["ours"]["idle_commands_per_s"] = idle_ours
        figures["stock"]["idle_commands_per_s"] = idle_stock
        print("queue bench: SIGKILL recovery (ours, default 10 s lease) ...", flush=True)
        figures["ours"].update(await kill_recovery(url_a))
        for c in pairs.values():
            await c.redis.aclose()
    return figures, version


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def report(figures: dict[str, dict[str, float]], redis_version: str) -> str:
    ours, stock = figures["ours"], figures["stock"]
    rows = [
        ("no-op jobs/s, one worker process", "jobs_per_s", "{:,.0f}", "x"),
        ("enqueue → start p50 (ms), one at a time", "p50_ms", "{:,.1f}", "/"),
        ("enqueue → start p99 (ms), one at a time", "p99_ms", "{:,.1f}", "/"),
        ("idle Redis commands/s per worker", "idle_commands_per_s", "{:.3f}", "/"),
        ("Redis commands per job: enqueue", "enqueue_commands_per_job", "{:.1f}", ""),
        ("Redis commands per job: worker", "worker_commands_per_job", "{:.1f}", ""),
        ("SIGKILL mid-job → job runs again (s)", "kill_to_restart_s", "{:.1f}", "-"),
        ("SIGKILL mid-job → job complete (s)", "kill_to_complete_s", "{:.1f}", "-"),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Queue, {when}",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Redis {redis_version}. One worker process per contender, each on a private redis-server (TCP loopback, "
        f"no persistence). Stock arq: `arq.worker.Worker` defaults (pickle, 0.5 s poll, max_jobs 10). Ours: "
        f"`python -m jobs` with default settings, cron off. Throughput: {THROUGHPUT_JOBS:,} jobs enqueued first. "
        f"Latency: "
        f"{LATENCY_JOBS['ours']} (ours) / {LATENCY_JOBS['stock']} (stock) jobs one at a time, from the times arq "
        f"records (1 ms resolution). Idle: "
        f"INFO commandstats delta over {IDLE_WINDOW_S:g} s.",
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
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the queue benchmark, print its table and append it to bench/RESULTS.md."""
    figures, version = asyncio.run(measure())
    section = report(figures, version)
    print(section)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nFigures are from one machine; compare ratios within one run.\n")
    with RESULTS.open("a") as out:
        out.write("\n" + section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.queue")
    parser.add_argument("command", nargs="?", choices=["run", "stock-worker"], default="run")
    parser.add_argument("url", nargs="?")
    cli = parser.parse_args()
    if cli.command == "stock-worker":
        run_stock_worker(cli.url)
    else:
        main()
