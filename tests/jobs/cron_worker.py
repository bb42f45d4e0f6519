"""``python -m tests.jobs.cron_worker NAME``: ``python -m jobs`` running one of the tests' cron schedules.

Fast schedules (every second) for the process tests; the tasks are the built-in ones.
"""

from __future__ import annotations

import sys

from jobs.__main__ import main
from jobs.cron import CronJob, Schedule
from jobs.crontab import Crontab

EVERY_SECOND = Crontab.at(second=None)
SCHEDULES = {
    "tick": Schedule([CronJob("tick", "diagnostics.ping", EVERY_SECOND, grace_s=30)]),
    "slow": Schedule([CronJob("slow", "diagnostics.sleep", EVERY_SECOND, args={"seconds": 2.5}, grace_s=30)]),
}

if __name__ == "__main__":
    sys.exit(main([], schedule=SCHEDULES[sys.argv[1]]))
