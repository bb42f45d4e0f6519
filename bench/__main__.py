"""``make bench``: every benchmark in one run; each appends its figures to bench/RESULTS.md.

``python -m bench [limiter] [limiter-cluster] [queue] [cron] [api]`` runs the ones named, in that order.
"""

from __future__ import annotations

import sys
import time

from bench import api, cron, limiter, limiter_cluster, queue

BENCHMARKS = {
    "limiter": limiter.main,
    "limiter-cluster": limiter_cluster.main,
    "queue": queue.main,
    "cron": cron.main,
    "api": api.main,
}


def main(argv: list[str]) -> int:
    chosen = set(argv) or set(BENCHMARKS)
    unknown = chosen - set(BENCHMARKS)
    if unknown:
        names = ", ".join(BENCHMARKS)
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {names}", file=sys.stderr)
        return 2
    for name, run in BENCHMARKS.items():
        if name in chosen:
            started = time.monotonic()
            run()
            print(f"{name} bench took {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
