"""The limiter on a Redis Cluster of three primaries beside the same limiter on one Redis.

``bench.limiter``'s "bare + this limiter alone" server (the service's ``Limiter`` on a bare
aiohttp app, 1,000 tenants, every request allowed) against:

1. one private ``redis-server`` on loopback TCP (the cluster speaks TCP, so the single
   server does too: same footing);
2. a private three-primary cluster (``service.embedded_cluster``), the limiter through its
   cluster transport;
3. for reference, one ``EVALSHA`` per request through redis-py's ``RedisCluster``.

Per scenario: decisions/s (each request is one decision), p50/p99, the web process's CPU
µs per decision, Redis ``EVALSHA`` calls per decision (a script call counts once: what a
metered Redis bills), and Redis CPU µs per decision (``INFO cpu`` of every node, user +
system, over the run): the figure that says how many decisions one Redis core carries.
Appends the table to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from redis import Redis

from bench import harness
from bench.limiter import SECONDS, _create_keys, _measure
from bench.redis_stats import command_calls, delta
from service.embedded_cluster import LocalCluster

SCENARIOS = (
    ("this limiter, one Redis (TCP)", "batched", "single"),
    ("this limiter, Redis Cluster of three primaries", "batched-cluster", "cluster"),
    ("one EVALSHA per request via redis-py's RedisCluster, three primaries", "evalsha-cluster", "cluster"),
)


def _snapshot(urls: list[str]) -> tuple[dict[str, int], float]:
    """Commands run and CPU seconds used so far, summed over the servers at ``urls``."""
    calls: dict[str, int] = {}
    cpu_s = 0.0
    for url in urls:
        client = Redis.from_url(url)
        try:
            stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
            cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
        finally:
            client.close()
        for name, count in command_calls(stats).items():
            calls[name] = calls.get(name, 0) + count
        cpu_s += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return calls, cpu_s


def main() -> None:
    """Run the three scenarios once, print the table and append it to ``bench/RESULTS.md``."""
    with (
        tempfile.TemporaryDirectory(prefix="ottoai-bench-") as tmp,
        harness.private_redis(Path(tmp), tcp=True) as single_url,
        LocalCluster(3) as cluster,
    ):
        folder = Path(tmp)
        asyncio.run(_create_keys(single_url, folder))
        urls = {"single": [single_url], "cluster": [server.url for server in cluster.servers]}
        machine = harness.machine(harness.redis_version(single_url))
        rows = []
        for label, mode, where in SCENARIOS:
            print(f"limiter cluster bench: {label} ...", flush=True)
            calls_before, cpu_before = _snapshot(urls[where])
            result = _measure(mode, folder / "tenants.targets", urls[where][0], folder)
            calls_after, cpu_after = _snapshot(urls[where])
            decisions = max(1.0, result["requests"])
            calls = delta(calls_before, calls_after)
            result["evalsha_per_decision"] = calls.get("evalsha", 0) / decisions
            result["redis_cpu_us_per_decision"] = (cpu_after - cpu_before) * 1e6 / decisions
            rows.append((label, result))
    lines = [
        f"## Limiter on Redis Cluster, {harness.now_utc()}",
        "",
        f"Machine: {machine}. Load: {harness.load_generator()}, {SECONDS} s per scenario, loopback, one web process, "
        "the service's limiter on a bare aiohttp app, 1,000 tenants, all allowed. Redis CPU is every node's.",
        "",
        "| scenario | decisions/s | p50 ms | p99 ms | web CPU µs/decision | EVALSHA/decision "
        "| Redis CPU µs/decision | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
            f"{r['cpu_us_per_request']:.1f} | {r['evalsha_per_decision']:.2f} | "
            f"{r['redis_cpu_us_per_decision']:.1f} | {r['non_2xx'] / max(1, r['requests']):.0%} |"
        )
    section = "\n".join(lines)
    print(section)
    harness.append_results(section)


if __name__ == "__main__":
    main()
