"""``make bench``: every benchmark in one run; each appends its figures to bench/RESULTS.md."""

from __future__ import annotations

import sys

from bench import cron, limiter, queue


def main(argv: list[str]) -> int:
    chosen = set(argv) or {"limiter", "queue", "cron"}
    unknown = chosen - {"limiter", "queue", "cron"}
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from limiter, queue, cron", file=sys.stderr)
        return 2
    if "limiter" in chosen:
        limiter.main()
    if "queue" in chosen:
        queue.main()
    if "cron" in chosen:
        cron.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
