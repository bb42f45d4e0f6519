"""The limiter's connections to a single Redis server, kept between its batches.

Taking a connection from redis-py's pool checks it with a read attempt (~25 µs a batch);
a kept connection is checked by its stream's EOF flag and its idle time instead. These use
redis-py's connection API below ``Redis`` (and its private ``_reader``):
``tests/test_redis_contract.py`` pins each member they use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool

from service.redis import IDLE_CONNECTION_MAX_S, read_replies, round_trip

__all__ = ["KeptConnections"]


class KeptConnections:
    """Connections of ``pool`` kept between round trips, with when each was last used (``clock``)."""

    def __init__(self, pool: ConnectionPool, clock: Callable[[], float]) -> None:
        self._pool = pool
        self._clock = clock
        self.idle: list[tuple[AbstractConnection, float]] = []

    async def round_trip(
        self,
        commands: list[bytes],
        trailing: Sequence[bytes] = (),
        between: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """One round trip; error replies come back in place (a connection failure raises).

        ``trailing`` commands go in the same write, after ``commands``; ``between`` gets the
        replies of ``commands`` before those of ``trailing`` are read. All the replies are returned.
        """
        connection = await self._take()
        replies = await round_trip(self._pool, connection, commands, trailing=trailing)
        if trailing:
            if between is not None:
                between(replies)
            replies += await read_replies(self._pool, connection, len(trailing))
        self.idle.append((connection, self._clock()))
        return replies

    async def open(self, count: int) -> None:
        """Open connections until ``count`` are kept (before traffic needs them)."""
        while len(self.idle) < count:
            self.idle.append((await self._pool.get_connection(), self._clock()))

    async def close(self) -> None:
        """Hand the kept connections back to the pool."""
        while self.idle:
            await self._pool.release(self.idle.pop()[0])

    async def _take(self) -> AbstractConnection:
        while self.idle:
            connection, used_at = self.idle.pop()
            reader = connection._reader
            if reader is not None and not reader.at_eof() and self._clock() - used_at <= IDLE_CONNECTION_MAX_S:
                return connection
            # Closed by the server while idle (a restart, a failover), or idle so long that a managed
            # Redis or a NAT may have dropped it without a word: let the pool renew it.
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)
        fresh: AbstractConnection = await self._pool.get_connection()
        return fresh
