"""The token-bucket script's wire format: its source and SHA, its keys and arguments, its reply.

``token_bucket.lua``'s comment block is the specification and this module its only Python
counterpart: the argument layout (``argv`` and the pieces it is built from), the reply
layout (``REPLY_PER_BUCKET`` numbers per bucket at the offsets ``OK`` ... ``RETRY_IN_US``),
and the framing of a batch as one RESP ``EVALSHA`` (``BatchFramer``). The framing is by
hand because redis-py's generic ``pack_command`` was the limiter's largest cost: each
route's arguments are framed once, each caller's keys once per route, and a batch only
joins those pieces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Final

from service.ratelimit.policy import Bucket, RouteBuckets
from service.script_calls import resp_bulk

__all__ = [
    "ALLOW_OOM_SCRIPT",
    "ALLOW_OOM_SCRIPT_SHA",
    "CROSS_SLOT_SCRIPT",
    "CROSS_SLOT_SCRIPT_SHA",
    "FULL_IN_US",
    "NOW_FROM_REDIS",
    "OK",
    "REMAINING_UNITS",
    "REPLY_PER_BUCKET",
    "RETRY_IN_US",
    "SCRIPT",
    "SCRIPT_SHA",
    "BatchFramer",
    "argv",
    "bucket_key",
    "bucket_reply",
]

SCRIPT: Final = resources.files("service.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
SCRIPT_SHA: Final = hashlib.sha1(SCRIPT.encode()).hexdigest()
# Redis >= 7 runs a script flagged so even at maxmemory with noeviction, when every other
# write is refused: a bucket key is a few bytes and expires, and a limiter that cannot
# decide would admit everyone. Redis 6.2 cannot read the flag line (the limiter falls back).
ALLOW_OOM_SCRIPT: Final = "#!lua flags=allow-oom\n" + SCRIPT
ALLOW_OOM_SCRIPT_SHA: Final = hashlib.sha1(ALLOW_OOM_SCRIPT.encode()).hexdigest()
# On Redis Cluster (Redis >= 7) one call decides the callers of every slot one primary
# serves: keys_from_argv.lua says how, and why such a call that fails changed nothing.
_KEYS_FROM_ARGV = resources.files("service.ratelimit").joinpath("keys_from_argv.lua").read_text(encoding="utf-8")
CROSS_SLOT_SCRIPT: Final = "#!lua flags=allow-oom,allow-cross-slot-keys\n" + _KEYS_FROM_ARGV + SCRIPT
CROSS_SLOT_SCRIPT_SHA: Final = hashlib.sha1(CROSS_SLOT_SCRIPT.encode()).hexdigest()

# ARGV[1]: the time in microseconds, or this to use Redis TIME. Only tests pass a time
# (the seam that lets a model and the script share a clock); the limiter always uses TIME.
NOW_FROM_REDIS: Final = b""
_ARGS_PER_BUCKET: Final = 4  # what _bucket_args returns

# The reply is a flat list of integers: per decision, admitted (1 or 0), then for each of
# its buckets REPLY_PER_BUCKET numbers, at these offsets from the bucket's first one.
REPLY_PER_BUCKET: Final = 4
OK, REMAINING_UNITS, FULL_IN_US, RETRY_IN_US = range(REPLY_PER_BUCKET)

_CALLER_CACHE_MAX = 100_000  # (caller, route) pairs whose keys are kept framed


def bucket_key(caller: str, bucket_name: str) -> str:
    """The Redis key of one caller's bucket; the hash tag keeps a caller's keys in one slot."""
    return f"rl:{{{caller}}}:{bucket_name}"


def _bucket_args(bucket: Bucket) -> tuple[bytes, ...]:
    """One bucket's ``_ARGS_PER_BUCKET`` arguments: capacity_units, refill_units_per_us, cost_units, enforced."""
    enforced = 0 if bucket.shadow else 1
    return tuple(b"%d" % n for n in (bucket.capacity_units, bucket.refill_units_per_us, bucket.cost_units, enforced))


def _decision_args(buckets: Sequence[Bucket], read_only: int) -> list[bytes]:
    """One decision's arguments: how many leading buckets it only reads, the number of buckets, then each bucket's."""
    args = [b"%d" % read_only, b"%d" % len(buckets)]
    for bucket in buckets:
        args += _bucket_args(bucket)
    return args


def argv(decisions: Sequence[tuple[Sequence[Bucket], int]], now_us: int | None = None) -> list[bytes]:
    """The whole ARGV of one call deciding ``decisions`` (buckets, how many leading ones are only read).

    ``now_us`` replaces Redis ``TIME``.
    """
    args = [NOW_FROM_REDIS if now_us is None else b"%d" % now_us, b"%d" % len(decisions)]
    for buckets, read_only in decisions:
        args += _decision_args(buckets, read_only)
    return args


def bucket_reply(ok: bool, remaining_units: int, full_in_us: int, retry_in_us: int) -> tuple[int, int, int, int]:
    """One bucket's numbers laid out as the script replies them (the refusal cache answers in the same form)."""
    return (1 if ok else 0, remaining_units, full_in_us, retry_in_us)


_NOW_FROM_REDIS = resp_bulk(NOW_FROM_REDIS)
_NO_KEYS = resp_bulk(b"0")


def _framed(args: list[bytes]) -> bytes:
    return b"".join([resp_bulk(arg) for arg in args])


class BatchFramer:
    """Frames a batch of decisions as one ``EVALSHA`` command, ready for ``service.redis.round_trip``.

    Keeps, per route, its arguments, and per (caller, route) the caller's bucket keys, all
    already framed; a batch is one ``join`` of those pieces.
    """

    def __init__(self, script_sha: str = SCRIPT_SHA, *, keys_in_argv: bool = False) -> None:
        self._evalsha = resp_bulk(b"EVALSHA") + resp_bulk(script_sha.encode())
        # CROSS_SLOT_SCRIPT's layout: no declared keys; ARGV starts with the key count and the keys.
        self._keys_in_argv = keys_in_argv
        self._routes: dict[RouteBuckets, bytes] = {}
        self._callers: dict[tuple[str, RouteBuckets], tuple[bytes, int, bytes]] = {}  # -> keys, key count, args

    def evalsha(self, decisions: Sequence[tuple[str, RouteBuckets, object]]) -> bytes:
        """One ``EVALSHA`` deciding each (caller, route, _) in order.

        Every key must share one hash slot, or with ``keys_in_argv`` be served by one cluster node.
        """
        callers = self._callers
        keys_wire = []
        args_wire = []
        key_count = 0
        for caller, route, _ in decisions:
            wire = callers.get((caller, route))
            if wire is None:
                wire = self._caller_wire(caller, route)
            keys, count, args = wire
            keys_wire.append(keys)
            args_wire.append(args)
            key_count += count
        arg_count = 2 + 2 * len(decisions) + _ARGS_PER_BUCKET * key_count
        head = [b"*%d\r\n" % (3 + key_count + arg_count), self._evalsha, resp_bulk(b"%d" % key_count)]
        if self._keys_in_argv:
            head = [b"*%d\r\n" % (4 + key_count + arg_count), self._evalsha, _NO_KEYS, resp_bulk(b"%d" % key_count)]
        return b"".join(
            [
                *head,
                *keys_wire,
                _NOW_FROM_REDIS,
                resp_bulk(b"%d" % len(decisions)),
                *args_wire,
            ]
        )

    def _caller_wire(self, caller: str, route: RouteBuckets) -> tuple[bytes, int, bytes]:
        args = self._routes.get(route)
        if args is None:
            args = self._routes[route] = _framed(_decision_args(route.buckets, route.read_only))
        if len(self._callers) >= _CALLER_CACHE_MAX:
            self._callers.clear()
        keys = _framed([bucket_key(caller, bucket.name).encode() for bucket in route.buckets])
        wire = self._callers[caller, route] = (keys, len(route.buckets), args)
        return wire
