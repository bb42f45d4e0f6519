"""Cron expressions and arq-style fields: parsing, and the slots around a moment, against a brute-force model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.crontab import Crontab


def ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()) * 1000


def iso(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:07:30", "2026-01-01T10:15:00"),
        ("*/15 * * * *", "2026-01-01T10:15:00", "2026-01-01T10:30:00"),  # strictly after
        ("0 3 * * *", "2026-01-01T03:00:01", "2026-01-02T03:00:00"),
        ("0 3 * * mon-fri", "2026-01-02T04:00:00", "2026-01-05T03:00:00"),  # Friday -> Monday
        ("30 2 1 jan,jul *", "2026-01-01T02:31:00", "2026-07-01T02:30:00"),
        ("0 0 * * 0", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),  # 0 is Sunday
        ("0 0 * * 7", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),  # so is 7
        ("0 0 13 * 5", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),  # Unix: the 13th *or* a Friday
        ("0 0 29 2 *", "2026-01-01T00:00:00", "2028-02-29T00:00:00"),
        ("5-10/2 * * * *", "2026-01-01T00:07:00", "2026-01-01T00:09:00"),
        ("10/20 * * * *", "2026-01-01T00:31:00", "2026-01-01T00:50:00"),  # from 10, every 20
    ],
)
def test_cron_expression_gives_the_next_slot(expression: str, after: str, expected: str) -> None:
    assert iso(Crontab.parse(expression).next_after(ms(after))) == expected


def test_arq_style_fields_must_all_fit_and_default_to_second_zero() -> None:
    friday_13th = Crontab.at(day=13, weekday="fri", hour=0, minute=0)
    assert iso(friday_13th.next_after(ms("2026-01-01T00:00:00"))) == "2026-02-13T00:00:00"
    twice_a_minute = Crontab.at(second={0, 30})
    assert iso(twice_a_minute.next_after(ms("2026-01-01T00:00:00"))) == "2026-01-01T00:00:30"
    assert twice_a_minute.text == "second=0,30"
    assert Crontab.at(hour=3, minute=0).text == "hour=3 minute=0 second=0"


def test_latest_slot_at_or_before_a_moment_includes_the_moment() -> None:
    hourly = Crontab.parse("0 * * * *")
    assert iso(hourly.latest_at_or_before(ms("2026-01-01T10:00:00"))) == "2026-01-01T10:00:00"
    assert iso(hourly.latest_at_or_before(ms("2026-01-01T10:59:59"))) == "2026-01-01T10:00:00"
    yearly = Crontab.parse("0 0 1 1 *")
    assert iso(yearly.latest_at_or_before(ms("2026-06-01T00:00:00"))) == "2026-01-01T00:00:00"


def test_count_includes_both_ends_and_stops_at_most() -> None:
    every_second = Crontab.at(second=None)
    first = ms("2026-01-01T00:00:00")
    assert every_second.count(first, first + 4_000) == 5
    assert every_second.count(first, first + 86_400_000, most=100) == 100
    assert Crontab.parse("0 3 * * *").count(first, first + 86_400_000) == 1


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("61 * * * *", "minute 61 is outside 0-59"),
        ("* * * * 8", "weekday 8 is outside 0-7"),
        ("* * * foo *", "month 'foo' is not a number"),
        ("*/0 * * * *", "step '0' is not a positive number"),
        ("10-5 * * * *", "range '10-5' runs backwards"),
        ("0 0 30 2 *", "matches no time"),
    ],
)
def test_malformed_or_impossible_expression_is_refused_naming_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Crontab.parse(expression)


def test_arq_style_field_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="hour=24"):
        Crontab.at(hour=24)


def _brute_next(crontab: Crontab, after_ms: int, limit_s: int) -> int | None:
    moment = (after_ms // 1000 + 1) * 1000
    for _ in range(limit_s):
        if crontab.matches(moment):
            return moment
        moment += 1000
    return None


small_sets = st.frozensets(st.integers(0, 59), min_size=1, max_size=4)
moments = st.integers(ms("2020-01-01T00:00:00"), ms("2030-12-31T00:00:00"))


@settings(max_examples=60, deadline=None)
@given(seconds=small_sets, minutes=small_sets, moment=moments)
def test_next_slot_is_the_first_matching_second_after_the_moment(
    seconds: frozenset[int], minutes: frozenset[int], moment: int
) -> None:
    crontab = Crontab.at(minute=minutes, second=seconds)
    assert crontab.next_after(moment) == _brute_next(crontab, moment, limit_s=3_600)


@settings(max_examples=150, deadline=None)
@given(
    expression=st.tuples(
        st.sampled_from(["*", "0", "*/7", "5,35", "10-20/5"]),
        st.sampled_from(["*", "3", "*/5", "1-4"]),
        st.sampled_from(["*", "1", "13", "29-31", "*/10"]),
        st.sampled_from(["*", "2", "jan,jul", "11-12"]),
        st.sampled_from(["*", "0", "mon-fri", "5", "sat,sun"]),
    ).map(" ".join),
    moment=moments,
)
def test_slots_around_a_moment_are_consistent(expression: str, moment: int) -> None:
    crontab = Crontab.parse(expression)
    latest, following = crontab.latest_at_or_before(moment), crontab.next_after(moment)
    assert crontab.matches(latest)
    assert crontab.matches(following)
    assert latest <= moment < following
    # nothing matches strictly between them: the slot after the latest is the next one
    assert crontab.next_after(latest) == following
    assert crontab.latest_at_or_before(following - 1) == latest
