"""The IETF ``RateLimit-Policy`` and ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers-10).

Both are structured-field lists of named items: the policy header once per bucket,
``"burst";q=20;w=2``, and the state of the bucket closest to empty, ``"burst";r=19;t=1``.
Bucket names are tokens of ``[A-Za-z0-9_.-]`` (checked by the policy loader), so they
need no escaping inside the quoted strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from service.ratelimit.policy import Bucket

__all__ = ["BucketReading", "policy_header", "ratelimit_header", "retry_after_header"]


class BucketReading(Protocol):
    """What the ``RateLimit`` header needs of one bucket's state."""

    @property
    def name(self) -> str: ...
    @property
    def remaining(self) -> int: ...
    @property
    def full_in_s(self) -> float: ...


def policy_header(buckets: Iterable[Bucket]) -> str:
    """``RateLimit-Policy``: quota ``q`` and window ``w`` (seconds to refill from empty) per bucket."""
    return ", ".join(f'"{b.name}";q={b.capacity};w={b.window_s}' for b in buckets)


def ratelimit_header(reading: BucketReading) -> str:
    """``RateLimit`` for one bucket: ``r`` whole tokens left, ``t`` seconds until it is full again."""
    return f'"{reading.name}";r={reading.remaining};t={math.ceil(reading.full_in_s)}'


def retry_after_header(retry_in_s: float) -> str:
    """``Retry-After`` in whole seconds, at least 1: the first moment a retry can succeed."""
    return str(max(1, math.ceil(retry_in_s)))
