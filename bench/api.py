"""API benchmark: the shipped ``python -m service serve``, route by route, against a bare handler.

What runs, on loopback, one process each:

- **serve**: ``python -m service serve`` as a subprocess with the environment ``fly.toml``'s
  ``[env]`` sets (read with ``tomllib``, so the benchmark follows the file), the
  Dockerfile's ``PYTHONUNBUFFERED=1``, and what only the benchmark can supply: ``HOST``
  (loopback), a free ``PORT``, ``REDIS_URL`` (a private ``redis-server`` on a unix socket)
  and ``RATE_LIMITS_FILE``. Everything else is the default: JSON access log on (written to
  a file; the lines are counted against the requests), metrics recorded, every middleware.
  A fresh process per scenario.
- **bare**: an aiohttp application with one JSON handler, no middleware, no access log,
  on the event loop implementation found loaded in the serve processes; loaded with GETs
  (the issue's comparison point), and once more with ``POST /v1/jobs``'s body, which it
  reads and parses before answering 202 (what any aiohttp POST handler pays).

The rate-limit policies (``RATE_LIMITS_FILE``) keep the shipped default plan's buckets and
routes, so each request pays what it pays in production, but make them roomy (capacity
1,000,000 at 100,000/s) so that every allowed request reaches Redis and none is refused;
the hot tenant's plan has the same buckets at capacity 10 and 0.1/s. Allowed traffic is
spread over ``TENANTS`` tenants with one API key each, rotated request by request, as many
callers would send it; each tenant owns ``JOBS_PER_TENANT`` queued jobs (no worker runs). Each
round starts from that data, written afresh: the jobs an earlier round's ``POST`` queued are gone.

Per scenario and round (``ROUNDS`` of them; each figure is the median), one timed run of
``SECONDS`` (requests/s, latency, CPU of the serve process from ``/proc/<pid>/stat``, Redis
CPU and server-side commands from ``INFO`` deltas), then a ``COUNT_SECONDS`` counting run
with a ``MONITOR`` tap that tells the commands the process sent from those Redis scripts
ran (``bench.redis_stats``). The timed run is cut into ``SLICES`` slices, each loaded beside
a slice of the same length on a bare app that runs alongside (bare then serve, serve then
bare, and so on), and the scenario's ratios divide by those bare slices: on a shared VM the
bare handler's speed moves by a third from one second to the next, so a bare run taken
before the scenario, even right before it, measured the machine's drift as much as the code.
Prints the table, the limiter's cost, issue 11's targets beside the figures, and appends it
all to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from bench import harness
from bench.redis_stats import Monitor, Window, command_calls, delta, per

SECONDS = 8
SLICES = 8  # the timed run's slices, each beside a bare slice of the same length
COUNT_SECONDS = 2
# Every scenario, the bare handler included, runs this many times, round after round: on a small
# shared machine one run of a scenario moves by up to 10% from the next. Each figure below is
# the median over the rounds (a ratio: the median of its per-round ratios), with its spread.
ROUNDS = 3
TENANTS = 1000
JOBS_PER_TENANT = 11  # a full page of GET /v1/jobs?limit=10, and a next one
ROOMY: dict[str, float] = {"capacity": 1_000_000, "per_second": 100_000}
TINY: dict[str, float] = {"capacity": 10, "per_second": 0.1}
POST_BODY = json.dumps({"task": "diagnostics.ping", "args": {}})
BARE_PATH = "/"
SETTLE_S = 0.5  # after a run, for the requests still in flight to be answered (p99 is far below)


@dataclass(frozen=True)
class Scenario:
    label: str
    targets: str  # the targets file: which path and key each request carries
    method: str = "GET"
    body: str = ""
    limiter: bool = True


JOB = "GET /v1/jobs/{id}, existing job"
JOB_OFF = "GET /v1/jobs/{id}, existing job, RATE_LIMIT_ENABLED=false"
HOT = "GET /v1/jobs/{id}, hot tenant over its limit"
RATE_LIMIT = "GET /v1/rate-limit"
RATE_LIMIT_OFF = "GET /v1/rate-limit, RATE_LIMIT_ENABLED=false"
HEALTH = "GET /health"
POST = "POST /v1/jobs (diagnostics.ping, {})"
BARE = "bare aiohttp JSON handler"
BARE_POST = "bare aiohttp handler, POST of the same body (read, parsed, 202)"
SCENARIOS = (
    Scenario(HEALTH, "health"),
    Scenario(RATE_LIMIT, "rate-limit"),
    Scenario(JOB, "job"),
    Scenario("GET /v1/jobs/{id}, missing id", "missing"),
    Scenario("GET /v1/jobs?limit=10", "list"),
    Scenario(HOT, "hot"),
    Scenario(JOB_OFF, "job", limiter=False),
    Scenario(RATE_LIMIT_OFF, "rate-limit", limiter=False),
    Scenario(POST, "post", method="POST", body=POST_BODY),  # last: it adds jobs
)

# Issue 11's targets: (what, scenario, figure, comparison, bound).
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("GET /v1/jobs/{id} ÷ bare", JOB, "vs_bare", ">=", 0.30),
    ("POST /v1/jobs ÷ bare", POST, "vs_bare", ">=", 0.25),
    ("GET /health ÷ bare", HEALTH, "vs_bare", ">=", 0.70),
    ("allowed with the limiter ÷ limiter off (GET /v1/jobs/{id})", JOB, "vs_off", ">=", 0.80),
    ("hot tenant over its limit ÷ limiter off (GET /v1/jobs/{id})", HOT, "vs_off", ">=", 0.95),
    ("GET /v1/jobs/{id}: Redis commands per request, client-sent, limiter included", JOB, "client_cmds", "<=", 2),
    ("POST /v1/jobs: Redis commands per request, client-sent, limiter included", POST, "client_cmds", "<=", 3),
)


# -- set-up -------------------------------------------------------------------------------------


def policies_toml() -> str:
    """The shipped default plan's buckets and routes, roomy for ``default`` and tiny for ``hot``."""
    from service.ratelimit.policy import DEFAULT_POLICIES_TOML

    shipped = tomllib.loads(DEFAULT_POLICIES_TOML)

    def plan(name: str, routes: dict[str, list[dict[str, Any]]], numbers: dict[str, float]) -> list[str]:
        lines = [f"[{name}]"]
        for route, buckets in routes.items():
            tables = [", ".join(f"{k} = {_toml_value(v)}" for k, v in {**b, **numbers}.items()) for b in buckets]
            lines.append(f"{json.dumps(route)} = [{', '.join('{ ' + t + ' }' for t in tables)}]")
        return lines

    default = shipped["plans"]["default"]
    lines = [*plan("plans.default", default, ROOMY), *plan("plans.hot", default, TINY)]
    lines += plan("anonymous", shipped["anonymous"], {})
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # numbers, and strings without control characters


async def _populate(redis_url: str, folder: Path) -> None:
    """API keys and jobs in Redis, and one targets file per kind of request."""
    from redis.asyncio import Redis as AsyncRedis

    from jobs.queue import JobQueue
    from service.auth import ApiKeyStore
    from service.settings import Settings

    client = AsyncRedis.from_url(redis_url)
    store = ApiKeyStore(client)
    queue = JobQueue(client, Settings.from_env({"REDIS_URL": redis_url}))
    try:
        tenants = [f"bench-{n}" for n in range(TENANTS)]
        keys = await asyncio.gather(*(store.create(tenant) for tenant in tenants))
        hot_key = await store.create("bench-hot", "hot")
        first_jobs: list[str] = []
        for tenant in [*tenants, "bench-hot"]:
            views = await asyncio.gather(
                *(queue.enqueue(tenant, "diagnostics.ping", {}) for _ in range(JOBS_PER_TENANT))
            )
            first_jobs.append(views[0][0].id)
    finally:
        await client.aclose()
    missing = uuid.uuid4().hex
    files = {
        "bare": [(BARE_PATH, "")],
        "health": [("/health", "")],
        "rate-limit": [("/v1/rate-limit", key) for key in keys],
        "job": [(f"/v1/jobs/{job}", key) for job, key in zip(first_jobs[:TENANTS], keys, strict=True)],
        "missing": [(f"/v1/jobs/{missing}", key) for key in keys],
        "list": [("/v1/jobs?limit=10", key) for key in keys],
        "hot": [(f"/v1/jobs/{first_jobs[-1]}", hot_key)],
        "post": [("/v1/jobs", key) for key in keys],
    }
    for name, targets in files.items():
        (folder / f"{name}.targets").write_text("".join(f"{path}\t{key}\n" for path, key in targets))


# -- one scenario -------------------------------------------------------------------------------


def fly_env() -> dict[str, str]:
    """The ``[env]`` table of ``fly.toml``."""
    with (harness.ROOT / "fly.toml").open("rb") as fly:
        return {name: str(value) for name, value in tomllib.load(fly)["env"].items()}


def serve_env(redis_url: str, policies: Path, ports: tuple[int, int], limiter: bool) -> dict[str, str]:
    """``fly.toml``'s ``[env]`` plus what only the benchmark can supply; ``ports``: the API's and the metrics'."""
    env = fly_env()
    port, metrics_port = ports
    if "METRICS_PORT" in env:  # a fixed port, which two runs on one machine would share
        env["METRICS_PORT"] = str(metrics_port)
    env.update(
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        PYTHONPATH=str(harness.ROOT),
        PYTHONUNBUFFERED="1",  # the Dockerfile's
        HOST="127.0.0.1",
        PORT=str(port),
        REDIS_URL=redis_url,
        RATE_LIMITS_FILE=str(policies),
    )
    if not limiter:
        env["RATE_LIMIT_ENABLED"] = "false"
    return env


def _first_request(port: int, targets: Path, method: str, body: str) -> int:
    """One request before the timed run (loads the scripts, opens the Redis connections); its status."""
    path, _, key = targets.read_text().splitlines()[0].partition("\t")
    headers = {"X-API-Key": key} if key else {}
    if body:
        headers["Content-Type"] = "application/json"
    data = body.encode() if body else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


class RedisProbe:
    """The bench's one connection for ``INFO``: server-side calls per command, and Redis's CPU time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = Redis.from_url(url)

    def snapshot(self) -> tuple[dict[str, int], float]:
        calls: dict[str, Any] = self._client.info("commandstats")  # type: ignore[assignment]
        cpu: dict[str, Any] = self._client.info("cpu")  # type: ignore[assignment]
        return command_calls(calls), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def flush(self) -> None:
        """Empty the server: what a round left behind."""
        self._client.flushall()

    def connections(self) -> Counter[str]:
        """Open connections by client name; serve names its pools, the bench's own connections have no name."""
        clients: list[dict[str, Any]] = self._client.client_list()  # type: ignore[assignment]
        return Counter(client["name"] for client in clients if client["name"])

    def close(self) -> None:
        self._client.close()


def scrape(ports: tuple[int, ...]) -> Counter[str] | None:
    """From the server's ``/metrics`` (that route left out): requests answered, 5xx answers,
    limiter fail-open decisions and limiter Redis errors so far; ``None`` without one.

    The first of ``ports`` that answers ``/metrics`` is read (the API's port, or a port of
    its own when ``METRICS_PORT`` moves it there).
    """
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
            break
        except OSError:  # no /metrics there (HTTPError is an OSError); the bare app has none
            continue
    else:
        return None
    figures: Counter[str] = Counter()
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        name, _, labels = sample.partition("{")
        if name == "http_requests_total" and 'route="/metrics"' not in labels:
            figures["answered"] += int(float(value))
            if 'status="5' in labels:
                figures["5xx"] += int(float(value))
        elif name == "ratelimit_decisions_total" and 'outcome="fail_open"' in labels:
            figures["limiter fail-open"] += int(float(value))
        elif name == "ratelimit_redis_errors_total":
            reason = labels.split('"')[1]  # reason="timeout"
            figures[f"limiter Redis errors ({reason})"] += int(float(value))
    return figures


def _answered(figures: Counter[str] | None, fallback: float) -> float:
    return float(figures["answered"]) if figures is not None else fallback


def _merged(runs: list[dict[str, float]]) -> dict[str, float]:
    """Load-generator results of several slices as one run: counts summed; p50 and p99 the median of the slices'."""
    merged = {key: sum(run[key] for run in runs) for key in ("requests", "seconds", "non_2xx", "socket_errors")}
    for key in ("p50_us", "p99_us"):
        values = sorted(run[key] for run in runs)
        merged[key] = values[len(values) // 2]
    return merged


def _timed_run(
    port: int, targets: Path, method: str, body: str, beside: int | None
) -> tuple[dict[str, float], float | None]:
    """The timed run on ``port``, and the bare app's requests/s beside it (``None`` without one).

    Beside a bare app (its port ``beside``), ``SECONDS`` are cut into ``SLICES`` slices, each
    loaded in turn with a bare slice of the same length: bare first in one pair, second in
    the next, so that a steady drift of the machine weighs on both alike.
    """
    if beside is None:
        return harness.load(port, targets, SECONDS, method, body), None
    bare_targets = targets.with_name("bare.targets")
    _first_request(beside, bare_targets, "GET", "")
    slice_s = SECONDS / SLICES
    mine: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    for number in range(SLICES):
        turns = [(bare, beside, bare_targets, "GET", ""), (mine, port, targets, method, body)]
        for runs, at, paths, how, what in turns if number % 2 == 0 else reversed(turns):
            runs.append(harness.load(at, paths, slice_s, how, what))
    paired = _merged(bare)
    return _merged(mine), paired["requests"] / paired["seconds"]


def measure(
    process: subprocess.Popen[bytes],
    ports: tuple[int, ...],
    targets: Path,
    probe: RedisProbe,
    method: str = "GET",
    body: str = "",
    beside: int | None = None,
) -> dict[str, Any]:
    """The timed run (``_timed_run``: beside the bare app on port ``beside``, if given), then the counting run,
    against the server ``process`` listening on ``ports[0]``.

    Per-request figures divide by the requests the server answered in the window (its own
    count: the load generator leaves out those in flight when it stops, whose commands
    Redis still runs); the bare app has no count of its own, so there the generator's is used.
    Commands per request divide by the requests answered without a 5xx: a 503 for want of a
    Redis connection sends none of its route's commands (only its share of a limiter call),
    and counting it would make a route look cheaper the more it fails. The server's CPU
    seconds are taken over the whole timed run, its idle turns beside the bare app included
    (a few timers), and its busy share is of its own slices.
    """
    port = ports[0]
    status = _first_request(port, targets, method, body)
    if status >= 500:
        raise RuntimeError(f"the first request to {targets.stem} answered {status}: see the server's log")
    result: dict[str, Any] = {"loop": harness.event_loop_of(process.pid)}
    before = scrape(ports)
    calls_before, redis_cpu_before = probe.snapshot()
    user_before, system_before = harness.cpu_times(process.pid)
    timed, bare_rps = _timed_run(port, targets, method, body, beside)
    time.sleep(SETTLE_S)
    user_after, system_after = harness.cpu_times(process.pid)
    calls_after, redis_cpu_after = probe.snapshot()
    after = scrape(ports)
    served = max(1.0, _answered(after, timed["requests"]) - _answered(before, 0))
    failed = (after or Counter())["5xx"] - (before or Counter())["5xx"]
    commands = delta(calls_before, calls_after)
    cpu_s = user_after - user_before + system_after - system_before
    result.update(timed)
    rps = timed["requests"] / timed["seconds"]
    result.update(
        rps=rps,
        bare_rps=rps if bare_rps is None else bare_rps,
        failed_share=failed / served,
        cpu_us=cpu_s * 1e6 / served,
        busy=cpu_s / timed["seconds"],
        system_us=(system_after - system_before) * 1e6 / served,
        redis_cpu_us=(redis_cpu_after - redis_cpu_before) * 1e6 / served,
        server_commands=commands,
        server_cmds=sum(commands.values()) / max(1.0, served - failed),
    )
    with Monitor(probe.url) as monitor:
        counting = harness.load(port, targets, COUNT_SECONDS, method, body)
        time.sleep(SETTLE_S)
        window = monitor.mark()
    end = scrape(ports)
    counted = max(1.0, _answered(end, counting["requests"]) - _answered(after, 0))
    count_failed = (end or Counter())["5xx"] - (after or Counter())["5xx"]
    result.update(count_failed_share=count_failed / counted, window=window, metrics=end)
    result["count_requests"] = max(1.0, counted - count_failed)
    result["client_cmds"] = window.client_total / result["count_requests"]
    result["connections"] = probe.connections()
    return result


@contextmanager
def _running(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=harness.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        harness.wait_for_port(port, process)
        yield process
    finally:
        harness.stop(process)


def run_serve(scenario: Scenario, probe: RedisProbe, folder: Path) -> dict[str, Any]:
    """One scenario's figures, beside a bare app on the event loop implementation serve runs on."""
    api_port, metrics_port = harness.free_ports(2)
    ports = (api_port, metrics_port)
    env = serve_env(probe.url, folder / "policies.toml", ports, scenario.limiter)
    log = folder / "serve.log"
    targets = folder / f"{scenario.targets}.targets"
    with (
        _running([sys.executable, "-m", "service", "serve"], env, ports[0], log) as process,
        _bare(harness.event_loop_of(process.pid), folder) as (_, bare_port),
    ):
        result = measure(process, ports, targets, probe, scenario.method, scenario.body, beside=bare_port)
    text = log.read_bytes()  # the scrapes of /metrics are logged too, but not counted in it
    result["log_lines"] = text.count(b'"event": "request"') - text.count(b'"path": "/metrics"')
    result["trouble"] = _trouble(text, result["metrics"])
    log.unlink()
    return result


def _trouble(log: bytes, metrics: Counter[str]) -> Counter[str]:
    """What went wrong in a serve process: its warnings and errors by event, and its /metrics' counts."""
    trouble = Counter({name: n for name, n in metrics.items() if name != "answered" and n})
    for line in log.splitlines():
        if b'"level": "warning"' in line or b'"level": "error"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                trouble["unparsed log line"] += 1
                continue
            cause = record.get("error")
            exceptions = record.get("exception")  # a traceback: [{"exc_type": ..., ...}, ...]
            if cause is None and isinstance(exceptions, list) and exceptions:
                cause = exceptions[0].get("exc_type")
            detail = f" ({cause})" if cause else ""
            trouble[f"log: {record.get('event')}{detail}"] += 1
    return trouble


@contextmanager
def _bare(loop: str, folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = harness.free_port()
    command = [sys.executable, "-m", "bench.harness", "bare", str(port), BARE_PATH, loop]
    env = {**os.environ, "PYTHONPATH": str(harness.ROOT)}
    with _running(command, env, port, folder / f"bare-{port}.log") as process:
        yield process, port


def run_bare(loop: str, probe: RedisProbe, folder: Path, method: str = "GET", body: str = "") -> dict[str, Any]:
    """The bare app's own figures: a GET alone (its ratio is 1), another method beside a second bare app
    loaded with GETs."""
    with _bare(loop, folder) as (process, port), contextlib.ExitStack() as stack:
        beside = None if method == "GET" else stack.enter_context(_bare(loop, folder))[1]
        result = measure(process, (port,), folder / "bare.targets", probe, method, body, beside)
    result["log_lines"] = 0
    return result


# -- the report ---------------------------------------------------------------------------------


def _failed(share: float) -> str:
    return f" ({share:.0%} 5xx)" if share >= 0.005 else ""


def _met(value: float, comparison: str, bound: float) -> str:
    ok = value >= bound if comparison == ">=" else value <= bound
    return "met" if ok else "**not met**"


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One round's ratios by scenario: ÷ the bare slices beside it, and ÷ the same stack with the limiter off
    where there is one (each of the two first divided by its own bare slices). The bare POST divides by the bare
    GET slices beside it, and ``POST /v1/jobs`` by that bare POST's round."""
    ratios = {label: {"vs_bare": r["rps"] / r["bare_rps"]} for label, r in results.items()}
    for label, off in ((JOB, JOB_OFF), (HOT, JOB_OFF), (RATE_LIMIT, RATE_LIMIT_OFF)):
        ratios[label]["vs_off"] = ratios[label]["vs_bare"] / ratios[off]["vs_bare"]
    ratios[POST]["vs_bare_post"] = results[POST]["rps"] / results[BARE_POST]["rps"]
    return ratios


def combine(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per scenario, its median round by requests/s, with each ratio the median of the rounds' and its range."""
    per_round = [_ratios(results) for results in rounds]
    rows: dict[str, dict[str, Any]] = {}
    for label in rounds[0]:
        runs = sorted((results[label] for results in rounds), key=lambda r: float(r["rps"]))
        row = dict(runs[len(runs) // 2])
        for key in per_round[0][label]:
            values = sorted(ratios[label][key] for ratios in per_round)
            row[key] = values[len(values) // 2]
            row[f"{key}_range"] = (values[0], values[-1])
        rows[label] = row
    return rows


def _range(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_range"]
    return f"{low:.2f} to {high:.2f}"


def report(rows: dict[str, dict[str, Any]], machine: str, loop: str) -> str:
    rate_limit_vs_off = rows[RATE_LIMIT]["vs_off"]
    lines = [
        f"## API (python -m service serve), {harness.now_utc()}",
        "",
        f"Machine: {machine}. Load: {harness.load_generator()}, {SECONDS} s timed run per scenario, then a "
        f"{COUNT_SECONDS} s counting run with a MONITOR tap; loopback; one server process each, {loop} event loop "
        f"(as loaded in serve); private redis-server on a unix socket. {ROUNDS} rounds of every scenario, the bare "
        "handler included: each row is the scenario's median round by requests/s, each ratio the median of the "
        f"rounds' ratios (its range beside it). Each timed run is {SLICES} slices of {SECONDS / SLICES:g} s, each "
        "loaded in turn with a slice of a bare handler running alongside (bare first in every other pair); the "
        "scenario's ratios divide by those bare slices (the limiter's on ÷ off divides the two scenarios' "
        "ratios), as the machine's speed moves from one second to the next by more than the effects measured. "
        "p50 and p99: the median of the slices'.",
        "",
        "serve: `python -m service serve` with fly.toml's [env] ("
        + ", ".join(f"{k}={v}" for k, v in fly_env().items())
        + "; the ports replaced by free ones, HOST=127.0.0.1), PYTHONUNBUFFERED=1, JSON access log to a file, "
        f"default middleware and metrics. RATE_LIMITS_FILE: the shipped default plan's buckets and routes at "
        f"capacity {ROOMY['capacity']:,} and {ROOMY['per_second']:,}/s (every allowed request reaches Redis, none "
        f"is refused); the hot tenant's plan: the same buckets at capacity {TINY['capacity']} and "
        f"{TINY['per_second']}/s. Traffic: {TENANTS:,} tenants, one API key each, rotated per request; each owns "
        f"{JOBS_PER_TENANT} queued jobs (no worker), written afresh before each round (so no round enqueues "
        "behind the jobs an earlier round's POST left).",
        "",
        "Per-request CPU divides by the requests serve answered in the window (its /metrics count), commands by "
        "the requests answered without a 5xx (a 503 for want of a Redis connection sends none of its route's "
        "commands). "
        "Server CPU: utime + stime of the serve process from /proc; server busy: those CPU seconds per second of "
        "the timed run (1.00: the process never waited; below it, it waited for Redis or for the load generator "
        "with no request it could work on). Redis commands, server-side: INFO commandstats "
        "deltas over the timed run (every command Redis ran, those its scripts ran included; the bench's INFO left "
        "out); client-sent: the counting run's MONITOR tap, a script call counting once (beside it, the share of "
        "that run's requests serve answered 5xx, when not negligible). The missing id "
        "(404) and "
        "the hot tenant (429) are non-2xx by design. Non-2xx is what the load generator saw; serve's own 5xx count "
        "also holds answers to requests the generator abandoned when it stopped.",
        "",
        "| scenario | requests/s | ÷ bare (rounds) | p50 ms | p99 ms | server CPU µs/request (of it system) "
        "| server busy | Redis CPU µs/request | non-2xx (5xx by serve's count) | Redis commands/request, server-side "
        "| Redis commands/request, client-sent | access-log lines/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        logged = f"{r['log_lines'] / r['metrics']['answered']:.2f}" if r["metrics"] else "off"
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {r['vs_bare']:.2f} ({_range(r, 'vs_bare')}) "
            f"| {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} "
            f"| {r['cpu_us']:.0f} ({r['system_us']:.0f}) | {r['busy']:.2f} | {r['redis_cpu_us']:.1f} "
            f"| {r['non_2xx'] / max(1, r['requests']):.1%} ({r['failed_share']:.1%}) "
            f"| {r['server_cmds']:.2f} | {r['client_cmds']:.2f}{_failed(r['count_failed_share'])} | {logged} |"
        )
    lines += [
        "",
        f"The limiter's own cost, with it ÷ without it (RATE_LIMIT_ENABLED=false): GET /v1/jobs/{{id}} allowed "
        f"{rows[JOB]['vs_off']:.2f} ({_range(rows[JOB], 'vs_off')}), hot tenant over its limit "
        f"{rows[HOT]['vs_off']:.2f} ({_range(rows[HOT], 'vs_off')}); GET /v1/rate-limit (the cheapest /v1 handler; "
        f"a read, no token spent) {rate_limit_vs_off:.2f} ({_range(rows[RATE_LIMIT], 'vs_off')}).",
        "",
        f"A POST costs aiohttp more than a GET before any handler code: the bare handler that reads and parses "
        f"POST /v1/jobs's body does {rows[BARE_POST]['vs_bare']:.2f} ({_range(rows[BARE_POST], 'vs_bare')}) of the "
        f"bare GET's requests/s. POST /v1/jobs ÷ that bare POST: {rows[POST]['vs_bare_post']:.2f} "
        f"({_range(rows[POST], 'vs_bare_post')}).",
        "",
        "| issue 11 target | figure (median) | rounds | target | | caveat |",
        "|---|---|---|---|---|---|",
    ]
    for what, label, key, comparison, bound in TARGETS:
        value = rows[label][key]
        sign = "≥" if comparison == ">=" else "≤"
        uses = (label, JOB_OFF) if key == "vs_off" else (label,)
        share = "count_failed_share" if key == "client_cmds" else "failed_share"  # the counting run's, or the timed
        caveat = "; ".join(f"{rows[x][share]:.1%} of {x} answered 5xx" for x in uses if rows[x][share])
        spread = _range(rows[label], key) if f"{key}_range" in rows[label] else ""
        lines.append(
            f"| {what} | {value:.3f} | {spread} | {sign} {bound:g} | {_met(value, comparison, bound)} | {caveat} |"
        )
    lines += [
        "",
        "Redis commands per request by name, from the counting run: sent by the process (what a metered Redis "
        "bills; a script call counts once, and the limiter batches the decisions of one loop turn into one call), "
        "and run inside Redis by those scripts.",
        "",
        "| scenario | client-sent | run by scripts | serve's Redis connections at the end, by client name |",
        "|---|---|---|---|",
    ]
    for label, r in rows.items():
        window: Window = r["window"]
        if window.server_total:
            requests = r["count_requests"]
            connections = ", ".join(f"{name} {n}" for name, n in sorted(r["connections"].items()))
            lines.append(
                f"| {label} | {per(window.client, requests)} | {per(window.script, requests)} | {connections} |"
            )
    troubled = {label: r["trouble"] for label, r in rows.items() if r.get("trouble")}
    if troubled:
        lines += [
            "",
            "What went wrong inside serve, per process (warm-up, timed and counting runs; from its log and /metrics):",
            "",
        ]
        for label, trouble in troubled.items():
            lines.append(f"- {label}: " + ", ".join(f"{what}: {n:,}" for what, n in trouble.most_common()) + ".")
    sockets = [f"{label} ({r['socket_errors']:,.0f})" for label, r in rows.items() if r["socket_errors"]]
    if sockets:
        lines += ["", "Load-generator socket errors: " + ", ".join(sockets) + "."]
    return "\n".join(lines) + "\n"


def _progress(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    """Run every scenario ``ROUNDS`` times, print the report and append it to ``bench/RESULTS.md``."""
    with (
        tempfile.TemporaryDirectory(prefix="ottoai-bench-api-") as tmp,
        harness.private_redis(Path(tmp)) as redis_url,
    ):
        folder = Path(tmp)
        probe = RedisProbe(redis_url)
        try:
            machine = harness.machine(harness.redis_version(redis_url))
            (folder / "policies.toml").write_text(policies_toml())
            rounds: list[dict[str, dict[str, Any]]] = []
            loop = ""
            for round_number in range(1, ROUNDS + 1):
                # Every round on the same data: POST /v1/jobs, the last scenario, leaves its jobs queued
                # (no worker runs), and a backlog grown round by round makes each enqueue dearer.
                _progress(f"api bench: {TENANTS:,} API keys and {TENANTS * JOBS_PER_TENANT:,} jobs ...")
                probe.flush()
                asyncio.run(_populate(redis_url, folder))
                results: dict[str, dict[str, Any]] = {}
                for scenario in SCENARIOS:
                    _progress(f"api bench, round {round_number} of {ROUNDS}: {scenario.label} ...")
                    results[scenario.label] = result = run_serve(scenario, probe, folder)
                    if loop and result["loop"] != loop:
                        raise RuntimeError(f"serve ran on different event loops: {loop} and {result['loop']}")
                    loop = result["loop"]
                _progress(f"api bench, round {round_number} of {ROUNDS}: {BARE} and {BARE_POST} ({loop}) ...")
                bare = run_bare(loop, probe, folder)
                bare_post = run_bare(loop, probe, folder, "POST", POST_BODY)
                rounds.append({BARE: bare, BARE_POST: bare_post, **results})
            rows = combine(rounds)
        finally:
            probe.close()
    section = report(rows, machine, loop)
    print(section)
    harness.append_results(section)


if __name__ == "__main__":
    main()
