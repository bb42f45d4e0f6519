"""What a worker counts of the jobs it runs: runs by task and outcome, and run durations by task.

The task runner (``jobs.registry``) records each run where it ran, in plain numbers; the
Prometheus families are built only when the process's ``/metrics`` is scraped. Labels are
bounded: task names come from the registry, outcomes from ``OUTCOMES``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.metrics import Histograms

__all__ = ["OUTCOMES", "JobMetrics", "Outcome"]

Outcome = Literal["complete", "failed", "retried", "aborted", "handed_back"]
OUTCOMES: tuple[Outcome, ...] = ("complete", "failed", "retried", "aborted", "handed_back")
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _retried(_: str) -> Outcome:
    return "retried"  # arq runs a cancelled job again, as it does after a failed try


class JobMetrics(Collector):
    """Runs of this worker by task and outcome, and their durations.

    ``cancelled_outcome`` tells what a cancelled run was (the worker knows: an abort, a
    hand-back on stop, or arq's own cancel, after which the job runs again).
    """

    def __init__(self, cancelled_outcome: Callable[[str], Outcome] = _retried) -> None:
        self.cancelled_outcome = cancelled_outcome
        self.runs: Counter[tuple[str, Outcome]] = Counter()
        self.durations = Histograms(_DURATION_BUCKETS_S)

    def record(self, task: str, outcome: Outcome, seconds: float | None = None) -> None:
        """Count one run of ``task`` that ended in ``outcome`` after ``seconds`` (``None``: it never started)."""
        self.runs[task, outcome] += 1
        if seconds is not None:
            self.durations.observe(task, seconds)

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "job_runs",
            "Job runs (tries) of this worker by task and outcome: complete, failed, retried, aborted, handed_back",
            labels=["task", "outcome"],
        )
        for (task, outcome), count in sorted(self.runs.items()):
            runs.add_metric([task, outcome], count)
        yield runs
        yield self.durations.family("job_run_duration_seconds", "Time one run of a job took, by task", "task")
