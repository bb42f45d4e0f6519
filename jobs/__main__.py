"""``python -m jobs [--check]``: run a worker, or check that a worker heartbeat is live;
``python -m jobs cron ...``: the cron schedule (``jobs.cron_cli``).

Exit codes: 0 done (or, with ``--check``, a live worker found), 1 failed (or none live),
2 cannot run (bad settings, or Redis refuses the credentials). A worker waits out Redis
outages; only a configuration error ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from redis.exceptions import AuthenticationError, RedisError

from jobs import cron_cli
from jobs.cron import SCHEDULE, Schedule
from jobs.fleet_metrics import FleetMetrics
from jobs.heartbeat import live_workers
from jobs.running import running_worker
from service import event_loop
from service.logging import configure_logging, get_logger, redact_text
from service.metrics import Metrics, metrics_listener
from service.redis import describe, redis_client
from service.settings import Settings, SettingsError

log = get_logger("jobs")


async def _check(settings: Settings) -> int:
    client = redis_client(settings, client_name="ottoai-check")
    try:
        workers = await live_workers(client)
    finally:
        await client.aclose()
    for worker in workers:
        print(f"{worker['id']} beat {worker['beat_age_s']:.1f} s ago, {worker['running']} running")
    if not workers:
        print("no live worker heartbeat", file=sys.stderr)
    return 0 if workers else 1


async def _cron(settings: Settings, schedule: Schedule, args: argparse.Namespace) -> int:
    client = redis_client(settings, client_name="ottoai-cli", retries=0)
    try:
        return await cron_cli.run(client, schedule, args)
    finally:
        await client.aclose()


async def _run(settings: Settings, schedule: Schedule) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics()
    async with running_worker(settings, schedule=schedule, metrics=metrics) as worker:
        assert worker.main_task is not None
        fleet = FleetMetrics(worker.pool, schedule if settings.enable_cron else None)
        fleet.register(metrics)
        async with metrics_listener(metrics, settings.metrics_port):
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([stopping, worker.main_task], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        await fleet.close()
        if worker.main_task.done() and not worker.main_task.cancelled():
            error = worker.main_task.exception()
            if error is not None:
                raise error
    return 0


def main(argv: Sequence[str] | None = None, *, schedule: Schedule = SCHEDULE) -> int:
    """The command line; ``schedule`` is the cron schedule a worker runs and ``cron`` acts on."""
    parser = argparse.ArgumentParser(prog="python -m jobs", description="OttoAI background job worker")
    parser.add_argument("--check", action="store_true", help="exit 0 when a worker heartbeat is live, else 1")
    cron_cli.add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        settings.require_redis()
    except SettingsError as exc:
        print(redact_text(str(exc)), file=sys.stderr)
        return 2
    configure_logging(settings.log_format, secrets=settings.secrets)
    for warning in settings.warnings:
        log.warning(warning)
    try:
        if args.command == "cron":
            return asyncio.run(_cron(settings, schedule, args))
        if args.check:
            return asyncio.run(_check(settings))
        return event_loop.run(_run(settings, schedule))
    except (RedisError, OSError) as exc:
        print(redact_text(f"jobs: {describe(exc, settings.require_redis())}"), file=sys.stderr)
        return 2 if isinstance(exc, AuthenticationError) else 1


if __name__ == "__main__":
    sys.exit(main())
