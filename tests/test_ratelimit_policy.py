"""Policies: the TOML format, its defaults, and start-up refusing a bad file by name."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from service.ratelimit.policy import load_policies
from service.settings import SettingsError
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.servers import redis_url

GOOD = """
[plans.default]
"*" = [{ name = "burst", capacity = 20, per_second = 10 }]
"POST /v1/jobs" = [{ name = "enqueue", capacity = 5, per_second = 0.1, cost = 2, on_redis_error = "closed" }]
[anonymous]
"*" = [{ name = "address", capacity = 10, per_second = 1, shadow = true }]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


def test_built_in_defaults_are_the_contract_example() -> None:
    policies = load_policies(None)
    default = policies.plan("default")
    assert [b.name for b in default.for_route(None).buckets] == ["burst", "sustained"]
    assert [b.name for b in default.for_route("POST /v1/jobs").buckets] == ["burst", "sustained", "enqueue"]
    assert policies.plan("pro").for_route(None).policy_header == '"burst";q=200;w=2'
    assert policies.plan("no-such-plan") is default
    assert policies.anonymous.for_route(None).policy_header == '"address";q=10;w=10'


def test_every_plan_pays_an_enqueue_bucket_the_default_one_when_it_lists_none(tmp_path: Path) -> None:
    policies = load_policies(
        write(tmp_path, GOOD + '[plans.gold]\n"*" = [{ name = "burst", capacity = 99, per_second = 9 }]\n')
    )
    gold = policies.plan("gold").for_route("POST /v1/jobs")
    assert [(b.name, b.capacity, b.per_second) for b in gold.buckets] == [
        ("burst", 99, Fraction(9)),
        ("enqueue", 5, Fraction(1)),
    ]
    assert gold.policy_header == '"burst";q=99;w=11, "enqueue";q=5;w=5'
    pro = load_policies(None).plan("pro").for_route("POST /v1/jobs")  # the contract's example lists none
    assert [(b.name, b.capacity) for b in pro.buckets] == [("burst", 200), ("enqueue", 5)]
    # Callers without a key are refused before any handler: they need no enqueue bucket.
    assert policies.anonymous.for_route("POST /v1/jobs") is policies.anonymous.for_route(None)


def test_rate_limit_endpoint_reads_the_common_buckets_and_spends_its_own() -> None:
    policies = load_policies(None)
    for plan in ("default", "pro"):
        status = policies.plan(plan).for_route("GET /v1/rate-limit")
        common = policies.plan(plan).for_route(None).buckets
        assert status.buckets[: status.read_only] == common
        assert [b.name for b in status.enforced] == ["status"]
    anonymous = policies.anonymous.for_route("GET /v1/rate-limit")
    assert anonymous.read_only == 0  # callers without a key spend their address bucket everywhere


def test_a_file_sets_fractions_costs_shadows_and_failure_modes(tmp_path: Path) -> None:
    policies = load_policies(write(tmp_path, GOOD))
    jobs = policies.plan("default").for_route("POST /v1/jobs")
    enqueue = jobs.buckets[1]
    assert (enqueue.per_second, enqueue.cost, enqueue.fail_closed) == (Fraction(1, 10), 2, True)
    assert jobs.fail_closed
    assert not policies.plan("default").for_route("GET /v1/jobs").fail_closed
    assert policies.anonymous.for_route(None).buckets[0].shadow
    assert policies.anonymous.for_route(None).policy_header == ""  # shadow buckets are not announced


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("capacity = 20", "capacity = 0"), "plans.default, route '*', bucket 'burst', field capacity"),
        (GOOD.replace("capacity = 20", 'capacity = "many"'), "field capacity: must be a whole number"),
        (GOOD.replace("per_second = 10", "per_second = -1"), "route '*', bucket 'burst', field per_second"),
        (GOOD.replace("cost = 2", "cost = 6"), "route 'POST /v1/jobs', bucket 'enqueue', field cost: 6 is above"),
        (GOOD.replace('"closed"', '"maybe"'), "bucket 'enqueue', field on_redis_error"),
        (GOOD.replace("shadow = true", 'shadow = "yes"'), "anonymous, route '*', bucket 'address', field shadow"),
        (
            GOOD.replace('name = "enqueue"', 'name = "burst"'),
            "route 'POST /v1/jobs', field name: 'burst' is used twice",
        ),
        (GOOD.replace("cost = 2,", "cost = 2, colour = 1,"), "bucket 'enqueue', field colour: unknown field"),
        (GOOD.replace('"POST /v1/jobs"', '"POST v1/jobs"'), "plans.default, route 'POST v1/jobs'"),
        (GOOD.replace("per_second = 0.1", "per_second = 0.0000001"), "field per_second: at most 6 decimal places"),
        (GOOD.replace("[plans.default]", "[plans.gold]"), "plans.default: missing"),
        (
            GOOD + '[plans.gold]\n"*" = [{ name = "enqueue", capacity = 9, per_second = 9 }]\n',
            "plans.gold, route 'POST /v1/jobs': missing, and its default bucket's name 'enqueue' is taken",
        ),
        (GOOD.replace("[anonymous]", "[plans.anon]"), "anonymous: missing"),
        (GOOD + "\n[extra]\n", "unknown top-level table 'extra'"),
        ("[plans.default\n", "limits.toml: "),
    ],
)
def test_bad_policy_is_refused_naming_file_plan_route_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_policies(path)
    message = str(caught.value)
    assert message.startswith(f"RATE_LIMITS_FILE: {path}: ")
    assert expected in message
    assert "\n" not in message


def test_serve_with_a_bad_policy_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("capacity = 20", "capacity = -3"))
    env = subprocess_env(REDIS_URL=redis_url(), RATE_LIMITS_FILE=str(path), PORT="1")
    done = subprocess.run(
        [PYTHON, "-m", "service", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"RATE_LIMITS_FILE: {path}: plans.default, route '*', bucket 'burst', field capacity: must be above 0, got -3"
    )
