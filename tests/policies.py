"""Rate-limit policies for tests: written where ``RATE_LIMITS_FILE`` can name them, and a set that never refuses."""

from __future__ import annotations

from pathlib import Path

__all__ = ["GENEROUS_POLICIES", "policies_file"]

# Enough that a test's traffic is never refused, for tests about something other than limits.
GENEROUS_POLICIES = """
[plans.default]
"*" = [{ name = "burst", capacity = 1000000, per_second = 100000 }]
"POST /v1/jobs" = [{ name = "enqueue", capacity = 1000000, per_second = 100000 }]

[anonymous]
"*" = [{ name = "address", capacity = 1000000, per_second = 100000 }]
"""


def policies_file(tmp_path: Path, policies: str) -> str:
    """``policies`` (TOML) written in ``tmp_path``: the path to give ``RATE_LIMITS_FILE``."""
    path = tmp_path / "policies.toml"
    path.write_text(policies)
    return str(path)
