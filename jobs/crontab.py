"""When a cron job runs: a 5-field cron expression or arq-style fields, in UTC, to the second.

``Crontab.parse("*/15 * * * *")`` reads a cron expression (minute, hour, day of month,
month, day of week) with ``*``, lists, ranges, steps and names (``mon``, ``jan``); day of
week 0 and 7 are Sunday. ``Crontab.at(hour=3, minute=0)`` takes arq's fields (month, day,
weekday, hour, minute, second): ``None`` is any value, else a number or a set of numbers;
weekday 0 is Monday, as in arq and Python; second defaults to 0. As in Unix cron, an
expression that restricts both the day of the month and the day of the week matches a
day that fits either; arq-style fields must all fit.

Times are epoch milliseconds (the queue's unit); slots fall on whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Crontab"]

# Every valid schedule matches within this many years (29 February of a leap year included).
_SEARCH_YEARS = 9
_RANGES = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day": (1, 31),
    "month": (1, 12),
    "weekday": (0, 6),
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH_NAMES = {name: number for number, name in enumerate(_MONTHS, 1)}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ARQ_WEEKDAY_NAMES = {name: number for number, name in enumerate(_DAYS)}  # Python's: 0 is Monday
_CRON_WEEKDAY_NAMES = {name: (number + 1) % 7 for name, number in _ARQ_WEEKDAY_NAMES.items()}  # cron's: 0 is Sunday
_SECOND = timedelta(seconds=1)

Option = int | str | Iterable[int | str] | None


def _utc(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


@dataclass(frozen=True)
class Crontab:
    """The slots of a schedule: the months, days, weekdays (0 = Monday), hours, minutes and
    seconds it allows. ``text`` is how it was written (shown to operators; a change of it is a
    change of schedule)."""

    text: str
    months: frozenset[int]
    days: frozenset[int]
    weekdays: frozenset[int]
    hours: frozenset[int]
    minutes: frozenset[int]
    seconds: frozenset[int]
    day_or_weekday: bool = False  # Unix cron's rule: a day matches on either field

    def __post_init__(self) -> None:
        self.next_after(0)  # ValueError for a schedule that never matches (30 February)

    @classmethod
    def parse(cls, expression: str) -> Crontab:
        """A 5-field cron expression; ``ValueError`` names the field that is wrong."""
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron expression {expression!r}: needs 5 fields (minute hour day month weekday), got {len(parts)}"
            )
        minute, hour, day, month, weekday = parts
        cron_weekdays = _field(expression, "weekday", weekday, (0, 7), _CRON_WEEKDAY_NAMES)
        return cls(
            text=" ".join(parts),
            months=_field(expression, "month", month, _RANGES["month"], _MONTH_NAMES),
            days=_field(expression, "day", day, _RANGES["day"]),
            weekdays=frozenset((number + 6) % 7 for number in cron_weekdays),  # cron counts from Sunday
            hours=_field(expression, "hour", hour, _RANGES["hour"]),
            minutes=_field(expression, "minute", minute, _RANGES["minute"]),
            seconds=frozenset({0}),
            day_or_weekday=not day.startswith("*") and not weekday.startswith("*"),
        )

    @classmethod
    def at(
        cls,
        *,
        month: Option = None,
        day: Option = None,
        weekday: Option = None,
        hour: Option = None,
        minute: Option = None,
        second: Option = 0,
    ) -> Crontab:
        """arq's fields: each ``None`` (any), a number, or a set of numbers; weekday 0 (or ``"mon"``) is Monday."""
        given = {"month": month, "day": day, "weekday": weekday, "hour": hour, "minute": minute, "second": second}
        text = " ".join(f"{name}={_render(value)}" for name, value in given.items() if value is not None)
        sets = {name: _option(name, value) for name, value in given.items()}
        return cls(
            text=text or "every second",
            months=sets["month"],
            days=sets["day"],
            weekdays=sets["weekday"],
            hours=sets["hour"],
            minutes=sets["minute"],
            seconds=sets["second"],
        )

    def matches(self, moment_ms: int) -> bool:
        """Whether a slot falls on this moment (whole seconds only)."""
        if moment_ms % 1000:
            return False
        moment = _utc(moment_ms // 1000)
        return (
            moment.month in self.months
            and self._day_matches(moment)
            and moment.hour in self.hours
            and moment.minute in self.minutes
            and moment.second in self.seconds
        )

    def next_after(self, moment_ms: int) -> int:
        """The first slot strictly after ``moment_ms``."""
        moment = _utc(moment_ms // 1000 + 1)
        last_year = moment.year + _SEARCH_YEARS
        while moment.year <= last_year:
            if moment.month not in self.months:
                moment = (moment.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif moment.hour not in self.hours:
                moment = moment.replace(minute=0, second=0) + timedelta(hours=1)
            elif moment.minute not in self.minutes:
                moment = moment.replace(second=0) + timedelta(minutes=1)
            elif moment.second not in self.seconds:
                moment += _SECOND
            else:
                return _ms(moment)
        raise ValueError(f"schedule {self.text!r} matches no time")

    def latest_at_or_before(self, moment_ms: int) -> int:
        """The last slot at or before ``moment_ms``."""
        moment = _utc(moment_ms // 1000)
        first_year = moment.year - _SEARCH_YEARS
        while moment.year >= first_year:
            if moment.month not in self.months:
                moment = moment.replace(day=1, hour=0, minute=0, second=0) - _SECOND
            elif not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0, second=0) - _SECOND
            elif moment.hour not in self.hours:
                moment = moment.replace(minute=0, second=0) - _SECOND
            elif moment.minute not in self.minutes:
                moment = moment.replace(second=0) - _SECOND
            elif moment.second not in self.seconds:
                moment -= _SECOND
            else:
                return _ms(moment)
        raise ValueError(f"schedule {self.text!r} matches no time")

    def count(self, first_ms: int, last_ms: int, *, most: int = 10_000) -> int:
        """How many slots fall in ``[first_ms, last_ms]``, counted up to ``most``."""
        found = 0
        slot = self.next_after(first_ms - 1)
        while slot <= last_ms and found < most:
            found += 1
            slot = self.next_after(slot)
        return found

    def _day_matches(self, moment: datetime) -> bool:
        in_month = moment.day in self.days
        in_week = moment.weekday() in self.weekdays
        return (in_month or in_week) if self.day_or_weekday else (in_month and in_week)


def _field(
    expression: str, name: str, text: str, bounds: tuple[int, int], names: dict[str, int] | None = None
) -> frozenset[int]:
    """One field of a cron expression: ``*``, ``n``, ``a-b``, each with an optional ``/step``, comma-separated."""
    low, high = bounds

    def number(token: str) -> int:
        value = (names or {}).get(token.lower())
        if value is None:
            if not token.isdigit():
                raise ValueError(f"cron expression {expression!r}: {name} {token!r} is not a number")
            value = int(token)
        if not low <= value <= high:
            raise ValueError(f"cron expression {expression!r}: {name} {value} is outside {low}-{high}")
        return value

    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron expression {expression!r}: {name} step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise ValueError(f"cron expression {expression!r}: {name} range {base!r} runs backwards")
        else:
            start = number(base)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _option(name: str, value: Option) -> frozenset[int]:
    low, high = _RANGES[name]
    if value is None:
        return frozenset(range(low, high + 1))
    items = [value] if isinstance(value, int | str) else list(value)
    numbers = set()
    for item in items:
        number = _ARQ_WEEKDAY_NAMES.get(item.lower()[:3]) if name == "weekday" and isinstance(item, str) else item
        if not isinstance(number, int) or not low <= number <= high:
            raise ValueError(f"cron {name}={item!r}: must be a number from {low} to {high}")
        numbers.add(number)
    if not numbers:
        raise ValueError(f"cron {name}: an empty set never matches")
    return frozenset(numbers)


def _render(value: Option) -> str:
    items = [value] if value is None or isinstance(value, int | str) else list(value)
    return ",".join(str(item) for item in sorted(items, key=lambda item: (isinstance(item, str), str(item).rjust(2))))
