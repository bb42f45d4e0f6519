"""Background jobs: the arq worker, its tasks and the cron schedule."""
