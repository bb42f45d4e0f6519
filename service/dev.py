"""What ``python -m service dev`` runs beside the web app: the in-process worker, and a ready API key.

- The worker runs in the web process's event loop and stops (handing its jobs back) when
  the app shuts down. It waits out Redis outages by itself; should it end anyway (Redis
  refuses the credentials), ``dev`` stops at once and says why, rather than serving on
  with nobody to run the jobs.
- On start ``dev`` prints, once, an API key of the ``dev`` tenant and a ``curl`` line that
  enqueues ``diagnostics.ping``. Redis keeps only a key's digest, so the key itself is kept
  in ``.dev-data/api-key`` (mode 0600) and reused while Redis still knows it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from redis.exceptions import RedisError

from jobs.running import running_worker
from service.app_keys import API_KEYS, METRICS
from service.auth import ApiKeyStore
from service.logging import get_logger
from service.redis import describe
from service.settings import Settings

__all__ = ["DEV_HOST", "DEV_KEY_FILE", "DEV_TENANT", "Context", "DevRun", "dev_key"]

DEV_HOST = "127.0.0.1"  # dev is for this machine only: it prints a working key and may run an embedded Redis
DEV_TENANT = "dev"
DEV_KEY_FILE = Path(".dev-data") / "api-key"

log = get_logger(__name__)

Context = Callable[[web.Application], AsyncIterator[None]]


async def dev_key(store: ApiKeyStore, path: Path = DEV_KEY_FILE) -> tuple[str, bool]:
    """The ``dev`` tenant's key kept in ``path`` while Redis still knows it, else a new one kept there.

    Returns the key and whether it is new.
    """
    kept = _read_key(path)
    if kept is not None:
        identity = await store.lookup(kept)
        if identity is not None and identity.tenant == DEV_TENANT:
            return kept, False
    key = await store.create(DEV_TENANT)
    _keep_key(path, key)
    return key, True


def _read_key(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _keep_key(path: Path, key: str) -> None:
    """Write ``key`` to ``path``, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def _banner(base_url: str, key: str, new: bool) -> str:
    made = "new, kept in" if new else "kept in"
    return "\n".join(
        [
            f"ottoai dev is up on {base_url} (API docs: {base_url}/docs)",
            f'API key of tenant "{DEV_TENANT}" ({made} {DEV_KEY_FILE}): {key}',
            "Enqueue a ping, then GET the Location it answers with the same header:",
            f"  curl -si -X POST {base_url}/v1/jobs -H 'Authorization: Bearer {key}' "
            """-H 'Content-Type: application/json' -d '{"task": "diagnostics.ping", "args": {}}'""",
        ]
    )


class DevRun:
    """The contexts ``dev`` adds to the app, and how its in-process worker ended, if it did."""

    def __init__(self, settings: Settings, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url
        self.worker_failure: BaseException | None = None

    def contexts(self) -> tuple[Context, ...]:
        worker = (self._worker_ctx,) if self.settings.enable_worker else ()
        return (self._key_ctx, *worker)

    async def _key_ctx(self, app: web.Application) -> AsyncIterator[None]:
        try:
            key, new = await dev_key(app[API_KEYS])
        except (RedisError, OSError) as exc:
            log.warning("no dev API key", reason=describe(exc, self.settings.require_redis()))
        else:
            print(_banner(self.base_url, key, new), file=sys.stdout, flush=True)
        yield

    async def _worker_ctx(self, app: web.Application) -> AsyncIterator[None]:
        async with running_worker(self.settings, metrics=app[METRICS]) as worker:
            assert worker.main_task is not None
            worker.main_task.add_done_callback(self._on_worker_end)
            yield

    def _on_worker_end(self, task: asyncio.Task[None]) -> None:
        failure = None if task.cancelled() else task.exception()
        if failure is None:
            return
        self.worker_failure = failure
        log.error("the in-process worker stopped; stopping dev", error=describe(failure, self.settings.require_redis()))
        signal.raise_signal(signal.SIGTERM)  # aiohttp's handler: a graceful shutdown of the whole app
