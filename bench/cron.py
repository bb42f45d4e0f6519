"""Cron benchmark: what the schedule costs in Redis commands, for a fleet of three idle workers.

Three fleets of three ``python -m jobs`` worker processes (default settings: 10 s leases,
20 s heartbeats, 30 s idle poll), each fleet on its own private ``redis-server`` so that
``INFO commandstats`` counts only that fleet, measured over the same window:

- cron off (``ENABLE_CRON=false``): the queue's idle cost, for reference;
- cron on, with the built-in schedule's jobs moved to one slot a year: what having cron on
  costs when no slot is due;
- cron on, with one job every ``SLOT_EVERY_S`` seconds (``diagnostics.ping``; longer than
  the lease, like production's schedules): commands per slot, after taking away the idle
  cost of the second fleet.

From these, the idle commands/s per worker with cron on and the built-in schedule:
idle + the periodic schedule check (3 commands every ``CRON_HEAL_S``) + commands per slot x
the built-in schedule's slots per second / 3 workers. Counts are ``INFO commandstats``'s:
commands run inside Lua scripts count one each, like the script call itself.

Prints a table and appends it to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime

from redis.asyncio import Redis

from bench import harness
from bench.queue import calls_by_command, counted, private_redis, stop_worker
from jobs.__main__ import main as jobs_main
from jobs.cron import SCHEDULE, CronJob, Schedule
from jobs.cron_runner import CRON_HEAL_S
from jobs.cron_store import CronStore
from jobs.crontab import Crontab
from jobs.heartbeat import live_workers

FLEET = 3
SLOT_EVERY_S = 15
WINDOW_S = 60.0
HEAL_COMMANDS = 3  # EVALSHA, HMGET, ZMSCORE: cron_sync.lua's steady-state check
DAY_MS = 86_400_000

SCHEDULES = {
    # The built-in jobs and tasks, each due once a year (1 January): cron on, no slot in the window.
    "quiet": Schedule(
        CronJob(job.name, job.task, Crontab.parse("0 0 1 1 *"), args=job.args, grace_s=job.grace_s) for job in SCHEDULE
    ),
    "busy": Schedule(
        [CronJob("bench-ping", "diagnostics.ping", Crontab.at(second=set(range(0, 60, SLOT_EVERY_S))), grace_s=60)]
    ),
}


def start_fleet(url: str, schedule: str | None) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "bench.cron", "worker", schedule] if schedule else [sys.executable, "-m", "jobs"]
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_URL")}
    env = {**base, "PYTHONPATH": str(harness.ROOT), "REDIS_URL": url, "LOG_FORMAT": "json"}
    if schedule is None:
        env["ENABLE_CRON"] = "false"
    return [
        subprocess.Popen(command, cwd=harness.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(FLEET)
    ]


def stop_fleet(fleet: list[subprocess.Popen[bytes]]) -> None:
    for process in fleet:
        stop_worker(process)


async def _until_live(redis: Redis, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await live_workers(redis)) < FLEET:
        if time.monotonic() > deadline:
            raise TimeoutError("bench.cron: the fleet did not start")
        await asyncio.sleep(0.1)


def builtin_slots_per_s() -> float:
    """Slots per second of the built-in schedule, over the next 30 days."""
    now_ms = int(time.time() * 1000)
    return sum(job.when.count(now_ms, now_ms + 30 * DAY_MS, most=10**7) for job in SCHEDULE) / (30 * DAY_MS / 1000)


async def measure(window_s: float) -> dict[str, float]:
    with ExitStack() as stack:
        urls = {name: stack.enter_context(private_redis()) for name in ("off", "quiet", "busy")}
        clients = {name: Redis.from_url(url) for name, url in urls.items()}
        fleets = {name: start_fleet(url, None if name == "off" else name) for name, url in urls.items()}
        for fleet in fleets.values():
            stack.callback(stop_fleet, fleet)
        try:
            await asyncio.gather(*(_until_live(client) for client in clients.values()))
            await asyncio.sleep(5.0)  # start-up (the first schedule sync, the first claims) is not idle
            before = {name: await calls_by_command(client) for name, client in clients.items()}
            started_ms = int(time.time() * 1000)
            await asyncio.sleep(window_s)
            after = {name: await calls_by_command(client) for name, client in clients.items()}
            ended_ms = int(time.time() * 1000)
            [busy] = await CronStore(clients["busy"], SCHEDULES["busy"]).status()
        finally:
            for client in clients.values():
                await client.aclose()
    per_worker = {
        name: counted(before[name], after[name], ignore=frozenset({"info"})) / window_s / FLEET for name in before
    }
    slots = sum(run.slots for run in busy.runs if started_ms <= run.started_ms <= ended_ms)
    busy_total = counted(before["busy"], after["busy"], ignore=frozenset({"info"}))
    per_slot = (busy_total - per_worker["quiet"] * FLEET * window_s) / max(slots, 1)
    amortized = per_worker["quiet"] + HEAL_COMMANDS / CRON_HEAL_S + per_slot * builtin_slots_per_s() / FLEET
    return {
        "idle_off": per_worker["off"],
        "idle_quiet": per_worker["quiet"],
        "slots": float(slots),
        "per_slot": per_slot,
        "amortized": amortized,
    }


def report(figures: dict[str, float], window_s: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    builtin = ", ".join(f"`{job.name}` ({job.when.text})" for job in SCHEDULE)
    rows = [
        ("idle Redis commands/s per worker, cron off", f"{figures['idle_off']:.3f}"),
        ("idle Redis commands/s per worker, cron on, no slot due", f"{figures['idle_quiet']:.3f}"),
        (
            f"Redis commands per cron slot, fleet of {FLEET} idle workers ({figures['slots']:.0f} slots)",
            f"{figures['per_slot']:.1f}",
        ),
        ("idle Redis commands/s per worker, cron on, built-in schedule (amortized)", f"{figures['amortized']:.3f}"),
    ]
    lines = [
        f"## Cron, {when}",
        "",
        f"Fleets of {FLEET} `python -m jobs` worker processes with default settings, each fleet on a private "
        f"redis-server, measured together over {window_s:g} s (INFO commandstats; commands inside scripts count). "
        f"Slots: one `diagnostics.ping` job every {SLOT_EVERY_S} s, less the idle cost. Built-in schedule: {builtin}; "
        f"amortized = idle + the schedule check ({HEAL_COMMANDS} commands every {CRON_HEAL_S:g} s) + commands per "
        f"slot x its slots/s / {FLEET}.",
        "",
        "| measure | figure |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
    ]
    return "\n".join(lines) + "\n"


def main(window_s: float = WINDOW_S) -> None:
    """Run the cron benchmark, print its table and append it to bench/RESULTS.md."""
    print(f"cron bench: three fleets of {FLEET} workers, {window_s:g} s ...", flush=True)
    section = report(asyncio.run(measure(window_s)), window_s)
    print(section)
    harness.append_results(section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.cron")
    parser.add_argument("command", nargs="?", choices=["run", "worker"], default="run")
    parser.add_argument("schedule", nargs="?", choices=sorted(SCHEDULES))
    parser.add_argument("--window-s", type=float, default=WINDOW_S)
    cli = parser.parse_args()
    if cli.command == "worker":
        sys.exit(jobs_main([], schedule=SCHEDULES[cli.schedule]))
    main(cli.window_s)
