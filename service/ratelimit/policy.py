"""Rate-limit policies: the TOML file of ``RATE_LIMITS_FILE`` (or built-in defaults) as frozen objects.

A plan maps route keys (``"*"`` or ``"METHOD /path/template"``) to buckets; a request
spends the buckets of ``"*"`` plus those of its own route. ``GET /v1/rate-limit``
(``STATUS_ROUTE``) is the exception for a plan of API keys: it reports the ``"*"`` buckets
without spending them and spends only its own (the anonymous section spends them as
everywhere: callers without a key get no report). Every plan of API keys pays an enqueue
bucket on ``POST /v1/jobs`` (each job costs Redis memory for a day): a plan that lists
none gets ``DEFAULT_ENQUEUE_BUCKET``. Everything a request needs is
resolved once here (the merged bucket tuple and its ``RateLimit-Policy`` header), so the
per-request work is one dictionary look-up.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from service.ratelimit.headers import policy_header
from service.settings import SettingsError

__all__ = [
    "DEFAULT_POLICIES_TOML",
    "STATUS_ROUTE",
    "Bucket",
    "Plan",
    "Policies",
    "PolicyError",
    "RouteBuckets",
    "load_policies",
]

UNITS_PER_TOKEN_PER_Q = 1_000_000  # one microsecond of refill is a whole number of units
_MAX_UNITS = 2**53  # Lua numbers are doubles: integers are exact up to here
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ROUTE = re.compile(r"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /\S*")
_FIELDS = frozenset({"name", "capacity", "per_second", "cost", "shadow", "on_redis_error"})
ENQUEUE_ROUTE = "POST /v1/jobs"
ANONYMOUS = "anonymous"
DEFAULT_PLAN = "default"
ALL_ROUTES = "*"
STATUS_ROUTE = "GET /v1/rate-limit"  # reads the caller's "*" buckets; spends only its own

DEFAULT_POLICIES_TOML = """
# A request spends the buckets of "*" and, if present, those of its own route.
[plans.default]
"*" = [
  { name = "burst", capacity = 20, per_second = 10 },
  { name = "sustained", capacity = 600, per_second = 10 },
]
"POST /v1/jobs" = [{ name = "enqueue", capacity = 5, per_second = 1, cost = 1 }]
"GET /v1/rate-limit" = [{ name = "status", capacity = 10, per_second = 1 }]

[plans.pro]
"*" = [{ name = "burst", capacity = 200, per_second = 100 }]
"GET /v1/rate-limit" = [{ name = "status", capacity = 10, per_second = 1 }]

[anonymous]          # callers without a valid API key, keyed by client address
"*" = [{ name = "address", capacity = 10, per_second = 1 }]
"""


# (name, capacity, per_second) of the enqueue bucket of a plan that lists none (the default plan's own).
DEFAULT_ENQUEUE_BUCKET = ("enqueue", 5, 1)


class PolicyError(ValueError):
    """A policy is malformed; ``str()`` names the plan, the route and the field."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket of a plan, with its numbers already in the script's integer units.

    ``per_second = p / q`` exactly; the script counts ``1 / (1e6 * q)`` of a token as one
    unit, so that a microsecond refills exactly ``p`` units and no fraction is ever lost.
    """

    name: str
    capacity: int
    per_second: Fraction
    cost: int = 1
    shadow: bool = False
    fail_closed: bool = False
    units_per_token: int = field(init=False)
    refill_units_per_us: int = field(init=False)
    cost_units: int = field(init=False)
    capacity_units: int = field(init=False)

    def __post_init__(self) -> None:
        units = UNITS_PER_TOKEN_PER_Q * self.per_second.denominator
        object.__setattr__(self, "units_per_token", units)
        object.__setattr__(self, "refill_units_per_us", self.per_second.numerator)
        object.__setattr__(self, "cost_units", self.cost * units)
        object.__setattr__(self, "capacity_units", self.capacity * units)

    @property
    def window_s(self) -> int:
        """Seconds for an empty bucket to fill (the ``w`` of ``RateLimit-Policy``)."""
        return max(1, math.ceil(self.capacity / self.per_second))


@dataclass(frozen=True, slots=True, eq=False)
class RouteBuckets:
    """What one (plan, route) spends: the merged buckets and their policy header, built once.

    The first ``read_only`` buckets are only read: reported, never spent, never refusing.

    Compared and hashed by identity (``eq=False``): the limiter's framing caches are keyed by
    route, and hashing every field (fractions included) per request would cost more than it saves.
    """

    plan: str
    buckets: tuple[Bucket, ...]
    read_only: int  # how many of the leading buckets are only read
    enforced: tuple[Bucket, ...]  # the buckets that can refuse (spent, not shadow)
    policy_header: str
    fail_closed: bool  # Redis could not answer: refuse (503) rather than admit


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan's buckets per route key, ``"*"`` already merged into every route."""

    name: str
    routes: Mapping[str, RouteBuckets]
    everywhere: RouteBuckets

    def for_route(self, route_key: str | None) -> RouteBuckets:
        """The buckets a request on ``route_key`` spends (``None``: it matched no route)."""
        if route_key is None:
            return self.everywhere
        return self.routes.get(route_key, self.everywhere)


@dataclass(frozen=True, slots=True)
class Policies:
    """Every plan and the anonymous section."""

    plans: Mapping[str, Plan]
    anonymous: Plan
    source: str

    def plan(self, name: str) -> Plan:
        """The plan called ``name``; a plan without a section uses ``default``."""
        return self.plans.get(name) or self.plans[DEFAULT_PLAN]


def load_policies(path: Path | None) -> Policies:
    """Policies from ``path``, or the built-in defaults; ``SettingsError`` names what is wrong."""
    source = str(path) if path is not None else "built-in defaults"
    try:
        text = path.read_text(encoding="utf-8") if path is not None else DEFAULT_POLICIES_TOML
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError("RATE_LIMITS_FILE", f"{source}: {exc}") from None
    try:
        return parse_policies(document, source)
    except PolicyError as exc:
        raise SettingsError("RATE_LIMITS_FILE", f"{source}: {exc}") from None


def parse_policies(document: Mapping[str, Any], source: str = "<policies>") -> Policies:
    """Validate a parsed TOML document; ``PolicyError`` names the plan, route and field."""
    unknown = set(document) - {"plans", ANONYMOUS}
    if unknown:
        raise PolicyError(f"unknown top-level table {sorted(unknown)[0]!r}: only [plans.<name>] and [anonymous]")
    plans_doc = document.get("plans")
    if not isinstance(plans_doc, dict) or DEFAULT_PLAN not in plans_doc:
        raise PolicyError("plans.default: missing; it is the plan of every key whose plan has no section")
    if ANONYMOUS not in document:
        raise PolicyError("anonymous: missing; callers without a valid key are limited by address with it")
    plans = {name: _plan(f"plans.{name}", name, body) for name, body in plans_doc.items()}
    anonymous = _plan(ANONYMOUS, ANONYMOUS, document[ANONYMOUS], of_api_keys=False)
    return Policies(plans=plans, anonymous=anonymous, source=source)


def _plan(where: str, name: str, body: Any, *, of_api_keys: bool = True) -> Plan:
    """A plan; ``of_api_keys`` (not the anonymous section) reads its ``"*"`` buckets on ``STATUS_ROUTE`` and
    pays an enqueue bucket."""
    if not _NAME.fullmatch(name):
        raise PolicyError(f"{where}: plan names are 1 to 64 letters, digits, '-', '_' or '.'")
    if not isinstance(body, dict):
        raise PolicyError(f"{where}: must be a table of route keys")
    if ALL_ROUTES not in body:
        raise PolicyError(f"{where}, route '*': missing; every plan needs the buckets all its requests spend")
    seen: set[str] = set()
    per_route: dict[str, tuple[Bucket, ...]] = {}
    for route, items in body.items():
        if route != ALL_ROUTES and not _ROUTE.fullmatch(route):
            raise PolicyError(f"{where}, route '{route}': route keys are '*' or 'METHOD /path/template'")
        if not isinstance(items, list) or not items:
            raise PolicyError(f"{where}, route '{route}': must be a non-empty array of buckets")
        buckets = []
        for index, item in enumerate(items):
            bucket = _bucket(f"{where}, route '{route}'", index, item)
            if bucket.name in seen:
                raise PolicyError(f"{where}, route '{route}', field name: {bucket.name!r} is used twice in this plan")
            seen.add(bucket.name)
            buckets.append(bucket)
        per_route[route] = tuple(buckets)
    if of_api_keys and ENQUEUE_ROUTE not in per_route:
        bucket_name, capacity, per_second = DEFAULT_ENQUEUE_BUCKET
        if bucket_name in seen:
            raise PolicyError(
                f"{where}, route '{ENQUEUE_ROUTE}': missing, and its default bucket's name {bucket_name!r} is "
                "taken; give the route its own bucket"
            )
        per_route[ENQUEUE_ROUTE] = (Bucket(bucket_name, capacity, Fraction(per_second)),)
    common = per_route.pop(ALL_ROUTES)
    routes = {route: _route_buckets(name, common + own) for route, own in per_route.items()}
    if of_api_keys:  # with or without buckets of its own
        routes[STATUS_ROUTE] = _route_buckets(name, common + per_route.get(STATUS_ROUTE, ()), read_only=len(common))
    return Plan(name=name, routes=routes, everywhere=_route_buckets(name, common))


def _route_buckets(plan: str, buckets: tuple[Bucket, ...], read_only: int = 0) -> RouteBuckets:
    enforced = tuple(b for b in buckets[read_only:] if not b.shadow)
    header = policy_header((b.name, b.capacity, b.window_s) for b in buckets if not b.shadow)
    return RouteBuckets(plan, buckets, read_only, enforced, header, any(b.fail_closed for b in enforced))


def _bucket(where: str, index: int, item: Any) -> Bucket:
    if not isinstance(item, dict):
        raise PolicyError(f"{where}, bucket {index + 1}: must be an inline table {{ name = ..., ... }}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(f"{where}, field name: 1 to 64 letters, digits, '-', '_' or '.', got {name!r}")
    at = f"{where}, bucket {name!r}, field"
    unknown = set(item) - _FIELDS
    if unknown:
        raise PolicyError(f"{at} {sorted(unknown)[0]}: unknown field (known: {', '.join(sorted(_FIELDS))})")
    capacity = _whole(f"{at} capacity", item.get("capacity"))
    cost = _whole(f"{at} cost", item.get("cost", 1))
    if cost > capacity:
        raise PolicyError(f"{at} cost: {cost} is above capacity {capacity}, so no request could ever pass")
    per_second = _rate(f"{at} per_second", item.get("per_second"))
    if capacity * UNITS_PER_TOKEN_PER_Q * per_second.denominator > _MAX_UNITS:
        raise PolicyError(f"{at} per_second: {item['per_second']} is too fine for capacity {capacity}; round it")
    shadow = item.get("shadow", False)
    if not isinstance(shadow, bool):
        raise PolicyError(f"{at} shadow: must be true or false, got {shadow!r}")
    on_error = item.get("on_redis_error", "open")
    if on_error not in ("open", "closed"):
        raise PolicyError(f'{at} on_redis_error: must be "open" or "closed", got {on_error!r}')
    return Bucket(name, capacity, per_second, cost, shadow, on_error == "closed")


def _whole(at: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{at}: must be a whole number above 0, got {value!r}")
    if value <= 0:
        raise PolicyError(f"{at}: must be above 0, got {value}")
    return value


def _rate(at: str, value: Any) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{at}: must be a number above 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{at}: must be a finite number above 0, got {value!r}")
    # The decimal the file wrote (0.1 is 1/10, not the nearest double).
    rate = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if rate.denominator > 1_000_000:
        raise PolicyError(f"{at}: at most 6 decimal places, got {value!r}")
    return rate
