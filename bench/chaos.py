"""``make chaos``: the whole chaos suite (``tests/chaos``) at 3 x the length ``make test`` runs it, figures appended.

Each scenario writes its figures as one JSON line (``CHAOS_REPORT``); this collects them
into a table under a "Chaos" heading in ``bench/RESULTS.md``, with the machine and date.
Exit code: pytest's (a failed scenario still reports what it measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness

SCALE = 3.0
# Columns of the table: (heading, figure name); a scenario's other figures follow in "also".
COLUMNS = [
    ("s", "seconds"),
    ("requests", "requests"),
    ("jobs acked", "jobs acknowledged"),
    ("jobs lost", "jobs lost"),
    ("completed twice", "jobs completed twice"),
    ("limiter path over 50 ms + 250 ms", "limiter-path requests over deadline + margin"),
    ("… and over /health's delay", "... and over the /health control's delay too"),
    ("limiter path p99 / max ms", None),
    ("/health max ms", "/health max latency ms"),
    ("any request max ms", "max latency ms"),
    ("503 + Retry-After", "503 with Retry-After"),
    ("other 5xx or no answer", "5xx beyond contract or unanswered"),
]
SHOWN = {name for _, name in COLUMNS if name} | {
    "scenario",
    "machine",
    "limiter-path p99 latency ms",
    "limiter-path max latency ms",
}


def run_suite(report: Path) -> int:
    env = {**os.environ, "CHAOS_SCALE": str(SCALE), "CHAOS_REPORT": str(report)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/chaos"]
    return subprocess.run(command, env=env, check=False).returncode


def _redis_version() -> str:
    found = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    words = found.stdout.split()
    return next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "?")


def table(rows: list[dict[str, Any]], machine: str, exit_code: int) -> str:
    lines = [
        f"## Chaos, {harness.now_utc()}",
        "",
        f"Machine: {machine}. `make chaos`: tests/chaos at "
        f"{SCALE:g} x its `make test` length; two `serve` and two `python -m jobs` on a private redis-server "
        "(loopback), a steady 100 requests/s (limiter-only, fail-closed tenant, job reads, enqueues of "
        "`diagnostics.sleep`, `/health` as the control). The limiter deadline is 50 ms; a limiter-path request "
        "may take 250 ms more, plus what a `/health` sent to the same web process within 0.25 s of it took "
        "(the machine's own stalls). "
        f"pytest exit code: {exit_code}.",
        "",
        "| scenario | " + " | ".join(heading for heading, _ in COLUMNS) + " | also |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for row in rows:
        cells = []
        for _, name in COLUMNS:
            if name is None:
                cells.append(f"{row['limiter-path p99 latency ms']} / {row['limiter-path max latency ms']}")
            else:
                value = row.get(name, "")
                cells.append(f"{value:,}" if isinstance(value, int) else str(value))
        also = "; ".join(f"{name}: {value}" for name, value in row.items() if name not in SHOWN)
        lines.append(f"| {row['scenario']} | " + " | ".join(cells) + f" | {also} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    machine = harness.machine(_redis_version())
    with tempfile.TemporaryDirectory(prefix="ottoai-chaos-") as folder:
        report = Path(folder) / "chaos.jsonl"
        code = run_suite(report)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    if not rows:
        print("chaos: no scenario reported figures", file=sys.stderr)
        return code or 1
    section = table(rows, machine, code)
    print(section)
    harness.append_results(section)
    return code


if __name__ == "__main__":
    sys.exit(main())
