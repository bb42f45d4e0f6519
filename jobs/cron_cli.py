"""``python -m jobs cron list | run NAME | pause NAME | resume NAME``: the cron schedule from the command line.

The same operations as ``/internal/cron``. Exit codes: 0 done, 1 refused (no such job, or
a run in progress), 2 cannot run (bad settings).
"""

from __future__ import annotations

import argparse
import sys

from redis.asyncio import Redis

from jobs.cron import Schedule, UnknownCronJob
from jobs.cron_store import CronJobRunning, CronJobStatus, CronStore
from jobs.serialization import iso_from_ms

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``cron`` and its subcommands, on ``python -m jobs``'s parser."""
    cron = commands.add_parser("cron", help="the cron schedule: list, run NAME, pause NAME, resume NAME")
    verbs = cron.add_subparsers(dest="cron_command", required=True, metavar="COMMAND")
    verbs.add_parser("list", help="each job: schedule, next run, state, last run")
    for verb, summary in (
        ("run", "run a job now, in place of its pending run"),
        ("pause", "pause a job: no runs until resume"),
        ("resume", "resume a paused job at its next slot"),
    ):
        verbs.add_parser(verb, help=summary).add_argument("name")


def _state(status: CronJobStatus) -> str:
    if status.running:
        return "running"
    return "paused" if status.paused else "scheduled"


def _print_list(statuses: list[CronJobStatus]) -> None:
    print(f"{'NAME':<24} {'SCHEDULE':<20} {'STATE':<10} {'NEXT RUN':<25} LAST RUN")
    for status in statuses:
        next_run = iso_from_ms(status.next_run_ms) if status.next_run_ms is not None else "-"
        last = status.runs[0] if status.runs else None
        last_run = f"{last.outcome} at {iso_from_ms(last.started_ms)}" if last else "-"
        print(f"{status.name:<24} {status.schedule:<20} {_state(status):<10} {next_run:<25} {last_run}")


async def run(redis: Redis, schedule: Schedule, args: argparse.Namespace) -> int:
    """Carry out ``args.cron_command``; the exit code."""
    store = CronStore(redis, schedule)
    try:
        if args.cron_command == "list":
            _print_list(await store.status())
        elif args.cron_command == "run":
            print(f"queued {args.name}: {await store.run_now(args.name)}")
        elif args.cron_command == "pause":
            await store.pause(args.name)
            print(f"paused {args.name}")
        else:
            status = await store.resume(args.name)
            when = iso_from_ms(status.next_run_ms) if status.next_run_ms is not None else "after its current run"
            print(f"resumed {args.name}: next run {when}")
    except UnknownCronJob:
        print(f"cron: no job named {args.name!r}; python -m jobs cron list shows them", file=sys.stderr)
        return 1
    except CronJobRunning as exc:
        print(f"cron: {exc}", file=sys.stderr)
        return 1
    return 0
