"""A limiter's verdict on one request, and the rate-limit headers it implies.

A ``Decision`` keeps the token-bucket script's raw reply (its layout is ``script``'s) and
builds objects or header strings only when asked, because one is made for every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from service.ratelimit.headers import ratelimit_header, retry_after_header
from service.ratelimit.policy import Bucket, RouteBuckets
from service.ratelimit.script import FULL_IN_US, OK, REMAINING_UNITS, REPLY_PER_BUCKET, RETRY_IN_US

__all__ = ["BucketState", "Decision", "Outcome"]


class Outcome:
    """What became of a request. Plain strings, not an Enum: enum hashing is Python code,
    and every decision is counted in a dictionary keyed by its outcome."""

    ALLOWED: Final = "allowed"
    LIMITED: Final = "limited"
    SHADOW_LIMITED: Final = "shadow_limited"  # admitted, though a shadow bucket came up short
    FAIL_OPEN: Final = "fail_open"
    FAIL_CLOSED: Final = "fail_closed"


class BucketState(NamedTuple):
    """One bucket as Redis (or the refusal cache) last saw it, in the script's integer units."""

    bucket: Bucket
    ok: bool
    remaining_units: int
    full_in_us: int
    retry_in_us: int  # -1: never (cost above capacity)

    @property
    def name(self) -> str:
        return self.bucket.name

    @property
    def remaining(self) -> int:
        """Whole tokens left."""
        return self.remaining_units // self.bucket.units_per_token

    @property
    def full_in_s(self) -> float:
        return self.full_in_us / 1e6


class Decision:
    """The verdict on one request and what its headers need.

    The bucket states stay the script's raw integers (per bucket: ok, remaining units,
    microseconds until full, microseconds until it can pay) until something asks: an
    admitted request needs one header line, not an object per bucket.
    """

    __slots__ = ("_at", "_buckets", "_read_only", "_reply", "outcome", "route")

    def __init__(
        self,
        route: RouteBuckets,
        outcome: str,
        buckets: tuple[Bucket, ...] = (),
        reply: Sequence[int] = (),
        at: int = 0,
        read_only: int = 0,
    ) -> None:
        self.route = route
        self.outcome = outcome  # an Outcome
        self._buckets = buckets  # empty when Redis did not answer
        self._reply = reply
        self._at = at  # where the first bucket's numbers start in ``reply``
        self._read_only = read_only  # how many of the leading buckets were only read (they cannot refuse)

    @property
    def states(self) -> tuple[BucketState, ...]:
        """Each bucket's state (empty when Redis did not answer)."""
        reply, at = self._reply, self._at
        starts = range(at, at + REPLY_PER_BUCKET * len(self._buckets), REPLY_PER_BUCKET)
        return tuple(
            BucketState(
                bucket, reply[i + OK] == 1, reply[i + REMAINING_UNITS], reply[i + FULL_IN_US], reply[i + RETRY_IN_US]
            )
            for bucket, i in zip(self._buckets, starts, strict=True)
        )

    @property
    def retry_after_us(self) -> int:
        """Microseconds until every enforced bucket can pay again."""
        reply, wait = self._reply, 0
        read_only = self._read_only
        at = self._at + REPLY_PER_BUCKET * read_only
        for bucket in self._buckets[read_only:]:
            if not bucket.shadow:
                retry = reply[at + RETRY_IN_US]
                wait = max(wait, retry if retry >= 0 else reply[at + FULL_IN_US])
            at += REPLY_PER_BUCKET
        return wait

    def lowest_share(self) -> float:
        """The smallest share of a bucket left after this request (0 empty, 1 full); 1 when Redis did not answer."""
        reply, at = self._reply, self._at
        lowest = 1.0
        for bucket in self._buckets:
            if not bucket.shadow:
                share = reply[at + REMAINING_UNITS] / bucket.capacity_units
                if share < lowest:
                    lowest = share
            at += REPLY_PER_BUCKET
        return lowest

    def state_header(self) -> str | None:
        """``RateLimit`` of the bucket closest to empty (of the violated ones when refused), if known."""
        limited = self.outcome is Outcome.LIMITED
        reply, at = self._reply, self._at
        spent_from = at + REPLY_PER_BUCKET * self._read_only  # read-only buckets never count as violated
        closest: Bucket | None = None
        closest_remaining = closest_full_in_us = 0
        for bucket in self._buckets:
            if not bucket.shadow and not (limited and (at < spent_from or reply[at + OK] == 1)):
                remaining = reply[at + REMAINING_UNITS] // bucket.units_per_token
                full_in_us = reply[at + FULL_IN_US]
                if closest is None or _closer(remaining, full_in_us, closest_remaining, closest_full_in_us):
                    closest, closest_remaining, closest_full_in_us = bucket, remaining, full_in_us
            at += REPLY_PER_BUCKET
        return None if closest is None else ratelimit_header(closest.name, closest_remaining, closest_full_in_us)

    def refusal(self) -> tuple[tuple[str, ...], dict[str, str]]:
        """What a 429 needs, in one pass over the buckets that can refuse: the violated names and every header."""
        reply = self._reply
        read_only = self._read_only
        at = self._at + REPLY_PER_BUCKET * read_only
        violated = []
        wait = 0
        closest: Bucket | None = None
        closest_remaining = closest_full_in_us = 0
        for bucket in self._buckets[read_only:]:
            if not bucket.shadow:
                retry = reply[at + RETRY_IN_US]
                full_in_us = reply[at + FULL_IN_US]
                wait = max(wait, retry if retry >= 0 else full_in_us)
                if reply[at + OK] != 1:
                    violated.append(bucket.name)
                    remaining = reply[at + REMAINING_UNITS] // bucket.units_per_token
                    if closest is None or _closer(remaining, full_in_us, closest_remaining, closest_full_in_us):
                        closest, closest_remaining, closest_full_in_us = bucket, remaining, full_in_us
            at += REPLY_PER_BUCKET
        headers = {"Retry-After": retry_after_header(wait)}
        if self.route.policy_header:
            headers["RateLimit-Policy"] = self.route.policy_header
        if closest is not None:
            headers["RateLimit"] = ratelimit_header(closest.name, closest_remaining, closest_full_in_us)
        return tuple(violated), headers

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and, when the state is known, ``RateLimit`` (plus ``Retry-After`` if refused)."""
        headers = {}
        if self.route.policy_header:
            headers["RateLimit-Policy"] = self.route.policy_header
        state = self.state_header()
        if state is not None:
            headers["RateLimit"] = state
        if self.outcome is Outcome.LIMITED:
            headers["Retry-After"] = retry_after_header(self.retry_after_us)
        return headers


def _closer(remaining: int, full_in_us: int, best_remaining: int, best_full_in_us: int) -> bool:
    """Whether a bucket is closer to empty than the best so far: fewer tokens, then the longer refill."""
    return remaining < best_remaining or (remaining == best_remaining and full_in_us > best_full_in_us)
