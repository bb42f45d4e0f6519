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
idle + the periodic schedule check (every ``CRON_HEAL_S``) + commands per slot x the
built-in schedule's slots per second / 3 workers. Each count twice (``bench.redis_stats``):
server-side (``INFO commandstats``: commands Lua scripts run count one each, like the
script call) and client-sent (a ``MONITOR`` tap: a script call counts once, as a metered
Redis such as Upstash bills).

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

from redis.asyncio import Redis

from bench import harness
from bench.queue import calls_by_command, counted, private_redis, stop_worker
from bench.redis_stats import OWN_COMMANDS, Monitor
from jobs.__main__ import main as jobs_main
from jobs.cron import SCHEDULE, CronJob, Schedule
from jobs.cron_runner import CRON_HEAL_S
from jobs.cron_store import CronStore
from jobs.crontab import Crontab
from jobs.heartbeat import live_workers

FLEET = 3
SLOT_EVERY_S = 15
WINDOW_S = 60.0
# cron_sync.lua's steady-state check: one EVALSHA sent, which runs HMGET and ZMSCORE.
HEAL_COMMANDS = {"server": 3, "client": 1}
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


async def measure(window_s: float) -> tuple[dict[str, dict[str, float]], str]:
    """Per kind of count (``server``, ``client``): the idle rates, commands per slot, and the amortized
    rate; and the machine they were measured on."""
    with ExitStack() as stack:
        urls = {name: stack.enter_context(private_redis()) for name in ("off", "quiet", "busy")}
        machine = harness.machine(harness.redis_version(urls["off"]))
        clients = {name: Redis.from_url(url) for name, url in urls.items()}
        fleets = {name: start_fleet(url, None if name == "off" else name) for name, url in urls.items()}
        for fleet in fleets.values():
            stack.callback(stop_fleet, fleet)
        try:
            await asyncio.gather(*(_until_live(client) for client in clients.values()))
            await asyncio.sleep(5.0)  # start-up (the first schedule sync, the first claims) is not idle
            monitors = {name: stack.enter_context(Monitor(url)) for name, url in urls.items()}
            before = {name: await calls_by_command(client) for name, client in clients.items()}
            started_ms = int(time.time() * 1000)
            await asyncio.sleep(window_s)
            windows = {name: monitor.mark() for name, monitor in monitors.items()}
            after = {name: await calls_by_command(client) for name, client in clients.items()}
            ended_ms = int(time.time() * 1000)
            [busy] = await CronStore(clients["busy"], SCHEDULES["busy"]).status()
        finally:
            for client in clients.values():
                await client.aclose()
    slots = sum(run.slots for run in busy.runs if started_ms <= run.started_ms <= ended_ms)
    totals = {
        "server": {name: counted(before[name], after[name], ignore=OWN_COMMANDS) for name in before},
        "client": {name: window.client_total for name, window in windows.items()},
    }
    figures = {}
    for kind, total in totals.items():
        idle = {name: calls / window_s / FLEET for name, calls in total.items()}
        per_slot = (total["busy"] - idle["quiet"] * FLEET * window_s) / max(slots, 1)
        amortized = idle["quiet"] + HEAL_COMMANDS[kind] / CRON_HEAL_S + per_slot * builtin_slots_per_s() / FLEET
        figures[kind] = {"idle_off": idle["off"], "idle_quiet": idle["quiet"], "per_slot": per_slot}
        figures[kind].update(amortized=amortized, slots=float(slots))
    return figures, machine


def report(figures: dict[str, dict[str, float]], window_s: float, machine: str) -> str:
    server, client = figures["server"], figures["client"]
    builtin = ", ".join(f"`{job.name}` ({job.when.text})" for job in SCHEDULE)
    rows = [
        ("idle Redis commands/s per worker, cron off", "idle_off", "{:.3f}"),
        ("idle Redis commands/s per worker, cron on, no slot due", "idle_quiet", "{:.3f}"),
        (f"Redis commands per cron slot, fleet of {FLEET} idle workers", "per_slot", "{:.1f}"),
        ("idle Redis commands/s per worker, cron on, built-in schedule (amortized)", "amortized", "{:.3f}"),
    ]
    lines = [
        f"## Cron, {harness.now_utc()}",
        "",
        f"Machine: {machine}. Fleets of {FLEET} `python -m jobs` worker processes with default settings, each "
        f"fleet on a private redis-server, measured together over {window_s:g} s. Slots: one `diagnostics.ping` "
        f"job every {SLOT_EVERY_S} s ({server['slots']:.0f} in the window), less the idle cost. Server-side: "
        "INFO commandstats (commands run by scripts count); client-sent: a MONITOR tap (a script call counts "
        f"once, as Upstash bills). Built-in schedule: {builtin}; amortized = idle + the schedule check every "
        f"{CRON_HEAL_S:g} s + commands per slot x its slots/s / {FLEET}.",
        "",
        "| measure | server-side | client-sent |",
        "|---|---|---|",
        *(f"| {label} | {fmt.format(server[key])} | {fmt.format(client[key])} |" for label, key, fmt in rows),
    ]
    return "\n".join(lines) + "\n"


def main(window_s: float = WINDOW_S) -> None:
    """Run the cron benchmark, print its table and append it to bench/RESULTS.md."""
    print(f"cron bench: three fleets of {FLEET} workers, {window_s:g} s ...", flush=True)
    figures, machine = asyncio.run(measure(window_s))
    section = report(figures, window_s, machine)
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
