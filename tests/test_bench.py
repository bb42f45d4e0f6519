"""The benchmarks' own arithmetic and counting: what ``make bench`` reports must be right before it is fast.

The benchmarks themselves run in ``make bench``, not here; these tests hold the parts
that turn measurements into the report: the API bench's ratios and medians, its report,
its policies file, and the Redis command counts (a ``MONITOR`` tap on a private server).
"""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from bench import api, harness
from bench.redis_stats import Monitor, Window, command_calls, delta, per
from service.ratelimit.policy import DEFAULT_POLICIES_TOML, parse_policies
from tests.servers import new_redis_server


def _run(rps: float, bare_rps: float) -> dict[str, Any]:
    """One scenario's measured figures, as ``measure`` leaves them."""
    return {
        "rps": rps,
        "bare_rps": bare_rps,
        "requests": rps * api.SECONDS,
        "seconds": float(api.SECONDS),
        "p50_us": 2000.0,
        "p99_us": 9000.0,
        "non_2xx": 0,
        "socket_errors": 0,
        "cpu_us": 100.0,
        "system_us": 20.0,
        "busy": 0.9,
        "redis_cpu_us": 30.0,
        "failed_share": 0.0,
        "count_failed_share": 0.0,
        "server_cmds": 11.0,
        "client_cmds": 1.06,
        "count_requests": 1000.0,
        "log_lines": 1000,
        "metrics": Counter({"answered": 1000}),
        "window": Window({"evalsha": 1060}, {"get": 6000}),
        "connections": Counter({"ottoai-web": 40}),
        "trouble": Counter(),
    }


def _round(scale: float) -> dict[str, dict[str, Any]]:
    """A round in which every scenario ran at ``scale`` times its base figure, beside a bare run of 30,000/s."""
    base = {api.BARE: 30_000.0, api.BARE_POST: 21_000.0, **{s.label: 9_000.0 for s in api.SCENARIOS}}
    base.update({api.JOB_OFF: 12_000.0, api.POST: 6_000.0})
    return {label: _run(rps * scale, 30_000.0) for label, rps in base.items()}


def test_each_ratio_is_the_median_of_the_rounds_with_their_range() -> None:
    rows = api.combine([_round(0.9), _round(1.1), _round(1.0)])

    job = rows[api.JOB]
    assert job["rps"] == 9_000.0  # the median round by requests/s
    assert job["vs_bare"] == pytest.approx(0.3)
    assert job["vs_bare_range"] == pytest.approx((0.27, 0.33))
    assert job["vs_off"] == pytest.approx(0.75)  # the two scenarios' own ratios divided: 0.30 / 0.40
    assert rows[api.BARE_POST]["vs_bare"] == pytest.approx(0.7)  # ÷ the bare GET slices beside it
    assert rows[api.POST]["vs_bare_post"] == pytest.approx(6_000.0 / 21_000.0)


def test_the_timed_run_takes_turns_with_the_bare_app_and_divides_by_its_slices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads: list[int] = []

    def load(port: int, targets: Path, seconds: float, method: str = "GET", body: str = "") -> dict[str, float]:
        loads.append(port)
        rps = 30_000.0 if port == 1 else 9_000.0  # port 1: the bare app
        p50 = 1_000.0 + len(loads)  # each slice its own latency
        figures = {"requests": rps * seconds, "seconds": seconds, "p50_us": p50, "p99_us": 2 * p50}
        return {**figures, "non_2xx": 1.0, "socket_errors": 0.0}

    monkeypatch.setattr(harness, "load", load)
    monkeypatch.setattr(api, "_first_request", lambda *_: 200)

    timed, bare_rps = api._timed_run(2, tmp_path / "job.targets", "GET", "", beside=1)

    assert loads == [1, 2, 2, 1] * (api.SLICES // 2)  # bare first in every other pair
    assert bare_rps == pytest.approx(30_000.0)
    assert timed["requests"] / timed["seconds"] == pytest.approx(9_000.0)
    assert timed["seconds"] == pytest.approx(api.SECONDS)
    assert timed["non_2xx"] == api.SLICES  # counts summed over the slices
    mine = sorted(1_000.0 + i + 1 for i, port in enumerate(loads) if port == 2)
    assert timed["p50_us"] == mine[len(mine) // 2]  # latencies: the median slice's


def test_the_report_shows_every_scenario_and_judges_each_target() -> None:
    rows = api.combine([_round(1.0), _round(1.0), _round(1.0)])

    text = api.report(rows, "a test machine", "uvloop")

    for scenario in (api.BARE, api.BARE_POST, *(s.label for s in api.SCENARIOS)):
        assert f"| {scenario} | " in text
    assert "| 0.90 |" in text  # server busy
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["GET /v1/jobs/{id} ÷ bare"].endswith("| ≥ 0.3 | met |  |")  # 0.300
    assert lines["POST /v1/jobs ÷ bare"].endswith("| ≥ 0.25 | **not met** |  |")  # 0.200
    assert "| ≤ 2 | met |" in lines["GET /v1/jobs/{id}: Redis commands per request, client-sent, limiter included"]


def test_the_policies_file_keeps_the_shipped_routes_roomy_for_tenants_and_tiny_for_the_hot_one() -> None:
    document = tomllib.loads(api.policies_toml())
    shipped = tomllib.loads(DEFAULT_POLICIES_TOML)

    parse_policies(document)  # the service accepts it
    assert document["plans"]["default"].keys() == shipped["plans"]["default"].keys()
    for route, buckets in document["plans"]["default"].items():
        assert [b["capacity"] for b in buckets] == [api.ROOMY["capacity"]] * len(buckets)
        assert [b["capacity"] for b in document["plans"]["hot"][route]] == [api.TINY["capacity"]] * len(buckets)
    assert document["anonymous"] == shipped["anonymous"]


def test_command_counts_leave_out_the_benchmarks_own_commands_and_zeros() -> None:
    before = command_calls({"cmdstat_get": {"calls": 5, "usec": 1}, "cmdstat_info": {"calls": 1}, "other": {}})
    after = command_calls({"cmdstat_get": {"calls": 9}, "cmdstat_info": {"calls": 4}, "cmdstat_set": {"calls": 5}})

    assert before == {"get": 5, "info": 1}
    assert delta(before, after) == {"get": 4, "set": 5}
    assert delta(after, after) == {}
    assert per({"get": 40, "set": 20, "del": 2, "a": 1}, 10, top=2) == "get 4.00, set 2.00, others 0.30"
    assert per({}, 10) == "none"


def test_the_monitor_tap_tells_commands_sent_from_those_a_script_ran() -> None:
    server = new_redis_server()
    client = Redis.from_url(server.url)
    try:
        with Monitor(server.url) as monitor:
            client.set("a", "1")
            client.eval("redis.call('GET', KEYS[1]); return redis.call('INCR', KEYS[1])", 1, "a")
            first = monitor.mark()
            client.get("a")
            second = monitor.mark()
    finally:
        client.close()

    assert first.client == {"set": 1, "eval": 1}
    assert first.script == {"get": 1, "incr": 1}
    assert (first.client_total, first.server_total) == (2, 4)
    assert second == Window({"get": 1}, {})  # each mark counts only what came after the one before
