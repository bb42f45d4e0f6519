"""Exact local refusals: what Redis said of a caller's near-empty buckets, enough to refuse without it.

When Redis has said a bucket held ``r`` units, at most ``r + rate * (now - sent)`` can be
there now (``sent`` is when that call left, so the bound errs high: other processes only
spend). While that bound is below the cost, the request is refused here, without a round
trip. Admissions always go to Redis. At most ``CALLERS_MAX`` callers are remembered.
"""

from __future__ import annotations

from collections.abc import Callable

from service.ratelimit.decision import Decision, Outcome
from service.ratelimit.policy import RouteBuckets
from service.ratelimit.script import OK, REMAINING_UNITS, REPLY_PER_BUCKET, RETRY_IN_US, bucket_reply

__all__ = ["CALLERS_MAX", "Refusals"]

CALLERS_MAX = 100_000


class Refusals:
    """Per caller, per bucket that could not pay another request: (units Redis reported, ``clock`` time sent)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._callers: dict[str, dict[str, tuple[int, float]]] = {}

    def refuse(self, caller: str, route: RouteBuckets) -> Decision | None:
        """A refusal decided without Redis, when an earlier reply proves a bucket cannot pay yet."""
        entries = self._callers.get(caller)
        if entries is None:
            return None
        now = self._clock()
        violated = []
        reply: list[int] = []
        for bucket in route.enforced:
            entry = entries.get(bucket.name)
            if entry is None:
                continue
            reported, sent = entry
            refill_units_per_us = bucket.refill_units_per_us
            # An upper bound of what Redis holds now; one unit of slack for float rounding.
            at_most = reported + refill_units_per_us * (now - sent) * 1e6 + 1
            if at_most >= bucket.cost_units:
                del entries[bucket.name]
                continue
            violated.append(bucket)
            reply += bucket_reply(
                False,
                int(at_most),
                int((bucket.capacity_units - at_most) / refill_units_per_us),
                int((bucket.cost_units - at_most) / refill_units_per_us),
            )
        if not violated:
            if not entries:
                del self._callers[caller]
            return None
        return Decision(route, Outcome.LIMITED, tuple(violated), reply)

    def learn(
        self, caller: str, route: RouteBuckets, admitted: bool, reply: list[int], first: int, sent: float
    ) -> bool:
        """Remember what the script's ``reply`` says of ``route``'s buckets for ``caller`` (from index
        ``first``; the call left at ``sent``). True when a shadow bucket it spends could not have paid."""
        stride = REPLY_PER_BUCKET
        end = first + stride * len(route.buckets)
        callers = self._callers
        if (
            admitted
            and len(route.enforced) == len(route.buckets)
            and not any(reply[first + RETRY_IN_US : end : stride])
        ):
            # The common case: admitted, and every bucket can pay for another request; nothing to remember.
            if callers:
                callers.pop(caller, None)
            return False
        shadow_short = False
        entries = callers.get(caller)
        for i, bucket in enumerate(route.buckets):
            base = first + stride * i
            if bucket.shadow:
                shadow_short = shadow_short or (i >= route.read_only and reply[base + OK] != 1)
            elif reply[base + RETRY_IN_US] != 0:
                if entries is None:
                    if len(callers) >= CALLERS_MAX:
                        callers.clear()
                    entries = callers[caller] = {}
                entries[bucket.name] = (reply[base + REMAINING_UNITS], sent)
            elif entries is not None:
                entries.pop(bucket.name, None)
        return shadow_short
