"""A worker's view of its Redis: one log line when it is lost, one when it is back.

Every part of a worker that talks to Redis (the main loop, the lease keeper, the finishing
of jobs) reports here, so an outage costs two lines however many retries it takes.
"""

from __future__ import annotations

import time

from service.logging import get_logger

__all__ = ["Outage"]

log = get_logger(__name__)


class Outage:
    """Whether Redis is unreachable for this worker, since when, and the lines that say so."""

    def __init__(self, worker_id: str) -> None:
        self._worker_id = worker_id
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: the first failure of an outage is logged, the rest are not."""
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "worker lost redis; retrying with backoff until it is back",
                worker_id=self._worker_id,
                error=str(exc) or type(exc).__name__,
            )

    def succeeded(self) -> None:
        """A Redis call succeeded: ends the outage, if there was one."""
        if self._since is not None:
            outage_s = round(time.monotonic() - self._since, 2)
            log.info("worker reached redis again", worker_id=self._worker_id, outage_s=outage_s)
            self._since = None
