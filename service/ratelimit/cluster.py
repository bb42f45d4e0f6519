"""The limiter on Redis Cluster: each loop turn's batch split by slot owner, one call per primary.

A cluster keeps each hash slot on one primary, and the limiter's keys carry one hash tag
per caller (``rl:{caller}:name``), so a caller's buckets share one slot. Per loop turn the
batch is split by primary; each primary gets one script call for all its callers
(``CROSS_SLOT_SCRIPT``, Redis >= 7: its keys travel as arguments, since a cluster refuses
declared keys of two slots) or, when that call cannot run (a slot on the move, Redis 6),
one ``EVALSHA`` per slot in one write. The primaries are asked side by side, and each
caller is answered as soon as its primary replies (a slow primary delays only its own).
Either way each caller's decision is one atomic script call.

Why not redis-py's ``RedisCluster``: it sends a command again after a connection error or
a timeout (``cluster_error_retry_attempts``; its pipeline resends failed commands one by
one), and a script call that may have run must never be sent twice. Here the calls are the
limiter's own hand-framed commands and the slot map is ``CLUSTER SLOTS``, read again
whenever the cluster says it changed (``bench/limiter_cluster.py``: 7,857 decisions/s and
0.25 ``EVALSHA`` a decision, against 5,990/s and 1.0 through ``RedisCluster``).

- ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``LOADING``, ``READONLY`` and
  ``NOSCRIPT`` mean the call did not run, so it may be sent again: ``MOVED`` to the slot's
  new owner (and the whole map is read again), ``ASK`` once to the importing node after
  ``ASKING``, ``NOSCRIPT`` after loading the script on that node; the others (a caller's
  keys split between two nodes mid-migration, a cluster electing a new primary) after a
  short pause. The limiter's deadline bounds all of it.
- A connection that fails may have carried a call that ran: those callers are answered
  by their fail-open/closed rule, never resent. The node is skipped for ``DOWN_S`` and the
  map is read again until another node serves its slots (a promoted replica): no restart.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from service.logging import get_logger
from service.ratelimit.policy import RouteBuckets
from service.ratelimit.script import (
    CROSS_SLOT_SCRIPT,
    CROSS_SLOT_SCRIPT_SHA,
    REPLY_PER_BUCKET,
    BatchFramer,
    bucket_key,
)
from service.redis import cancel_until_done, connection_pool, round_trip
from service.settings import RedisURL

__all__ = ["SLOTS", "BatchOwner", "ClusterHealth", "ClusterTransport", "is_cluster"]

SLOTS = 16384
MAX_REDIRECTS = 5  # MOVED or ASK hops of one call within one batch
DOWN_S = 0.5  # a node whose connection failed is not tried again for this long
REFRESH_EVERY_S = 0.1  # the slot map is read at most this often
RETRY_PAUSE_S = (0.002, 0.005, 0.01, 0.02, 0.05)  # before sending again after TRYAGAIN and the like
_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_REDIRECT = frozenset({"MOVED", "ASK"})
_NOT_RUN = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY", "NOSCRIPT"})
_ERROR_CLASSES = ((NoScriptError, "NOSCRIPT"), (BusyLoadingError, "LOADING"), (ReadOnlyError, "READONLY"))

log = get_logger(__name__)

Group = Sequence[tuple[str, RouteBuckets, Any]]  # one slot's decisions: (caller, route, future)


class BatchOwner(Protocol):
    """What the transport needs of the limiter: framing, the script, and answering callers."""

    def frame(self, group: Group) -> bytes:
        """One ``EVALSHA`` deciding ``group``."""

    async def load_script(self, redis: Redis) -> None:
        """Load the script on the node behind ``redis``."""

    def answer(self, group: Group, reply: list[int] | ResponseError, sent: float) -> None:
        """Resolve ``group`` from its script reply (or error reply)."""

    def give_up(self, groups: Sequence[Group], kind: str, error: str) -> None:
        """Answer the undecided callers of ``groups`` by their fail-open/closed rule."""

    def cluster_reply(self, code: str) -> None:
        """Count a reply that says the call did not run (``MOVED``, ``ASK``, ``TRYAGAIN``, ...)."""


@dataclass(frozen=True)
class ClusterHealth:
    """What readiness and ``doctor`` report of a cluster."""

    state: str  # cluster_state of the node asked: "ok" or "fail"
    slots_covered: int  # slots assigned to a primary that is not failing
    primaries: dict[str, float | str] = field(default_factory=dict)  # address -> PING ms, or the error

    @property
    def unreachable(self) -> list[str]:
        return sorted(address for address, ping in self.primaries.items() if isinstance(ping, str))

    @property
    def ok(self) -> bool:
        return self.state == "ok" and self.slots_covered == SLOTS and bool(self.primaries) and not self.unreachable


async def is_cluster(client: Redis) -> bool:
    """Whether the server behind ``client`` is a Redis Cluster node (``INFO cluster``)."""
    info = await client.info("cluster")
    return str(info.get("cluster_enabled", "0")) == "1"


def slot_of(caller: str, route: RouteBuckets) -> int:
    """The hash slot of every key of ``caller`` (its hash tag's)."""
    return key_slot(bucket_key(caller, route.buckets[0].name).encode())


class ClusterTransport:
    """The cluster's slot map and one no-retry connection pool per node; sends the limiter's batches."""

    def __init__(self, seed: RedisURL, *, timeout_s: float, max_connections: int, client_name: str) -> None:
        self._seed = seed
        self._seed_address = f"{seed.host}:{seed.port}"
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._client_name = client_name
        self._owners: list[str | None] = [None] * SLOTS
        self._primaries: list[str] = []
        self._links: dict[str, Redis] = {}
        self._down_until: dict[str, float] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -math.inf
        # One call per node and turn for the callers of all its slots, until a node cannot load the script.
        self._across_framer = BatchFramer(CROSS_SLOT_SCRIPT_SHA, keys_in_argv=True)
        self._across_ok = True

    @property
    def primaries(self) -> list[str]:
        """The addresses (``host:port``) of the nodes that serve slots, as last read."""
        return self._primaries

    def owner(self, caller: str, route: RouteBuckets) -> str | None:
        return self._owners[slot_of(caller, route)]

    async def start(self) -> None:
        """Read the slot map once; if no node answers, the first batches read it again (and fail meanwhile)."""
        try:
            await self.refresh()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter cluster: no slot map yet", redis=self._seed.redacted, error=str(exc))

    async def close(self) -> None:
        if self._refreshing is not None:
            await cancel_until_done(self._refreshing)
        for link in self._links.values():
            await link.aclose()
        self._links.clear()

    def split(self, calls: Group) -> list[Group]:
        """The batch as one group per hash slot (one script call each)."""
        slots: dict[int, list[tuple[str, RouteBuckets, Any]]] = {}
        for call in calls:
            slots.setdefault(slot_of(call[0], call[1]), []).append(call)
        return list(slots.values())

    async def send(self, groups: Sequence[Group], owner: BatchOwner, sent: float) -> None:
        """Decide ``groups`` on their primaries, side by side; ``owner`` answers each group as it comes back."""
        by_node: dict[str | None, list[Group]] = {}
        for group in groups:
            by_node.setdefault(self._owners[slot_of(group[0][0], group[0][1])], []).append(group)
        await asyncio.gather(*(self._deliver(node, part, owner, sent) for node, part in by_node.items()))

    async def _deliver(
        self,
        node: str | None,
        groups: list[Group],
        owner: BatchOwner,
        sent: float,
        asking: bool = False,
        hops: int = 0,
        pauses: int = 0,
    ) -> None:
        """Send ``groups`` to ``node`` in one write, then follow what the replies say (never resending one that ran)."""
        if node is None or self._down_until.get(node, 0.0) > time.monotonic():
            self._refresh_soon()
            owner.give_up(groups, "connection", f"no reachable primary for this slot ({node or 'unknown'})")
            return
        link = self._link(node)
        try:
            if hops == 0 and len(groups) > 1 and self._across_ok and await self._across(link, groups, owner, sent):
                return
            commands = [owner.frame(group) for group in groups]
            if asking:
                replies = (await _exchange(link, [part for command in commands for part in (_ASKING, command)]))[1::2]
            else:
                replies = await _exchange(link, commands)
        except (RedisError, OSError) as exc:
            self._down_until[node] = time.monotonic() + DOWN_S
            self._refresh_soon()
            owner.give_up(groups, "connection", f"{node}: {exc}")
            return
        again: dict[tuple[str | None, bool], list[Group]] = {}
        reload = pause = False
        for group, reply in zip(groups, replies, strict=True):
            kind, rest = _error_kind(reply)
            if kind in _REDIRECT or (kind in _NOT_RUN and kind != "NOSCRIPT"):  # the limiter counts NOSCRIPT itself
                owner.cluster_reply(kind)
            if kind in _REDIRECT and hops - pauses < MAX_REDIRECTS:
                target = rest.split(" ")[-1]
                if kind == "MOVED":
                    self._owners[int(rest.split(" ")[0])] = target  # until the refresh reads the whole map
                    self._refresh_soon()
                again.setdefault((target, kind == "ASK"), []).append(group)
            elif kind in _NOT_RUN and (kind != "NOSCRIPT" or hops - pauses < MAX_REDIRECTS):  # the deadline ends others
                reload = reload or kind == "NOSCRIPT"
                pause = pause or kind != "NOSCRIPT"
                if kind != "NOSCRIPT":
                    self._refresh_soon()
                owner_now = node if kind == "NOSCRIPT" else self._owners[slot_of(group[0][0], group[0][1])]
                again.setdefault((owner_now, asking and kind == "NOSCRIPT"), []).append(group)
            else:
                owner.answer(group, reply, sent)
        if not again:
            return
        if reload:
            try:
                await owner.load_script(link)
            except (RedisError, OSError) as exc:  # the others' replies are in; these cannot be decided now
                owner.give_up([group for part in again.values() for group in part], "connection", f"{node}: {exc}")
                return
        if pause:
            await asyncio.sleep(RETRY_PAUSE_S[min(pauses, len(RETRY_PAUSE_S) - 1)])
        await asyncio.gather(
            *(
                self._deliver(target, part, owner, sent, ask, hops + 1, pauses + pause)
                for (target, ask), part in again.items()
            )
        )

    async def _across(self, link: Redis, groups: list[Group], owner: BatchOwner, sent: float) -> bool:
        """Decide every group of one node in one script call (``CROSS_SLOT_SCRIPT``); False: it did not run.

        It does not run when a key it would touch is not served by the node (a slot on the
        move, a stale map) or the cluster is down; the groups then go one slot at a time, which
        follows the redirects. A Redis before 7 cannot load the script: one slot at a time from then on.
        """
        calls = [call for group in groups for call in group]
        reply: Any = None
        for _ in range(2):  # a NOSCRIPT loads it, once
            [reply] = await _exchange(link, [self._across_framer.evalsha(calls)])
            if not isinstance(reply, NoScriptError):
                break
            owner.cluster_reply("NOSCRIPT")
            try:
                await link.script_load(CROSS_SLOT_SCRIPT)
            except ResponseError:
                self._across_ok = False
                return False
        if isinstance(reply, ResponseError):
            owner.cluster_reply("SPLIT")
            return False
        at = 0
        for group in groups:
            size = sum(1 + REPLY_PER_BUCKET * len(route.buckets) for _, route, _ in group)
            owner.answer(group, reply[at : at + size], sent)
            at += size
        return True

    def _link(self, address: str) -> Redis:
        link = self._links.get(address)
        if link is None:
            host, _, port = address.rpartition(":")
            pool = connection_pool(
                self._node_url(host, int(port)),
                max_connections=self._max_connections,
                timeout_s=self._timeout_s,
                retries=0,
                client_name=self._client_name,
            )
            link = self._links[address] = Redis.from_pool(pool)
        return link

    def _node_url(self, host: str, port: int) -> RedisURL:
        """The seed's URL (scheme, user, password, options) pointed at another node."""
        seed = urlsplit(self._seed.url)
        scheme = seed.scheme if seed.scheme != "unix" else "redis"
        user = seed.netloc.rpartition("@")[0]
        where = f"[{host}]" if ":" in host else host
        netloc = f"{user}@{where}:{port}" if user else f"{where}:{port}"
        url = seed._replace(scheme=scheme, netloc=netloc, path="" if seed.scheme == "unix" else seed.path).geturl()
        return RedisURL.parse(self._seed.variable, url)

    def _refresh_soon(self) -> None:
        """Read the slot map again in the background, at most every ``REFRESH_EVERY_S``."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        delay_s = max(0.0, self._refreshed_at + REFRESH_EVERY_S - time.monotonic())
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_after(delay_s))

    async def _refresh_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            await self.refresh()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter cluster: cannot read the slot map", error=str(exc))

    async def refresh(self) -> None:
        """Read ``CLUSTER SLOTS`` from the first node that answers: the known primaries, then the seed."""
        self._refreshed_at = time.monotonic()
        now = time.monotonic()
        known = self.primaries
        candidates = [a for a in known if self._down_until.get(a, 0.0) <= now] + [self._seed_address]
        errors = []
        for address in dict.fromkeys(candidates):
            try:
                async with asyncio.timeout(min(self._timeout_s, 1.0)):
                    shards = await self._link(address).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError) as exc:
                errors.append(f"{address}: {exc or type(exc).__name__}")
                continue
            self._apply(shards, address)
            return
        raise ConnectionError(f"no cluster node answered CLUSTER SLOTS ({'; '.join(errors)})")

    def _apply(self, shards: list[Any], asked: str) -> None:
        owners: list[str | None] = [None] * SLOTS
        for start, end, primary, *_ in shards:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            if host in ("", "?"):  # the node does not know its own address: the one we asked
                host = asked.rpartition(":")[0]
            owners[int(start) : int(end) + 1] = [f"{host}:{int(primary[1])}"] * (int(end) - int(start) + 1)
        self._owners = owners
        self._primaries = sorted({owner for owner in owners if owner is not None})

    async def health(self) -> ClusterHealth:
        """Cluster state and slot coverage from one node, then a PING to every primary."""
        await self.refresh()
        info: dict[str, Any] = {}
        for address in self.primaries:
            try:
                info = await self._link(address).cluster("INFO")
                break
            except (RedisError, OSError):
                continue
        covered = int(info.get("cluster_slots_ok", 0)) + int(info.get("cluster_slots_pfail", 0))
        primaries = self.primaries
        pings = await asyncio.gather(*(self._ping(address) for address in primaries))
        state = str(info.get("cluster_state", "unknown"))
        return ClusterHealth(state, covered, dict(zip(primaries, pings, strict=True)))

    async def _ping(self, address: str) -> float | str:
        started = time.perf_counter()
        try:
            await self._link(address).ping()
        except (RedisError, OSError) as exc:
            return str(exc) or type(exc).__name__
        return round((time.perf_counter() - started) * 1000, 2)


def _error_kind(reply: Any) -> tuple[str, str]:
    """An error reply's code and the rest of its text; ``("", "")`` for a script's reply.

    redis-py turns some codes into classes and strips them from the text; the cluster's own
    (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) stay plain ``ResponseError`` text.
    """
    if not isinstance(reply, ResponseError):
        return "", ""
    for error_class, kind in _ERROR_CLASSES:
        if isinstance(reply, error_class):
            return kind, str(reply)
    kind, _, rest = str(reply).partition(" ")
    return kind, rest


async def _exchange(link: Redis, commands: list[bytes]) -> list[Any]:
    """One write of ``commands`` on one connection; error replies come back in place, a connection failure raises."""
    pool = link.connection_pool
    connection = await pool.get_connection()
    replies = await round_trip(pool, connection, commands)
    await pool.release(connection)
    return replies
