"""The IETF ``RateLimit-Policy`` and ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers-10).

Both are structured-field lists of named items: the policy header once per bucket,
``"burst";q=20;w=2``, and the state of the bucket closest to empty, ``"burst";r=19;t=1``.
Bucket names are tokens of ``[A-Za-z0-9_.-]`` (checked by the policy loader), so they
need no escaping inside the quoted strings. Times arrive in the script's whole
microseconds and are rounded up in integers, so no float can round a second away.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["policy_header", "ratelimit_header", "retry_after_header"]

_US_PER_S = 1_000_000


def policy_header(buckets: Iterable[tuple[str, int, int]]) -> str:
    """``RateLimit-Policy`` from (name, quota ``q``, window ``w``: seconds to refill from empty) per bucket."""
    return ", ".join(f'"{name}";q={quota};w={window_s}' for name, quota, window_s in buckets)


def ratelimit_header(name: str, remaining: int, full_in_us: int) -> str:
    """``RateLimit`` for one bucket: ``r`` whole tokens left, ``t`` seconds until it is full again."""
    return f'"{name}";r={remaining};t={-(-full_in_us // _US_PER_S)}'


def retry_after_header(retry_in_us: int) -> str:
    """``Retry-After`` in whole seconds, at least 1: the first moment a retry can succeed."""
    return str(max(1, -(-retry_in_us // _US_PER_S)))
