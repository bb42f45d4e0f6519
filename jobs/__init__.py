"""Background jobs: the arq worker, its tasks and the cron schedule.

The worker (``jobs.worker``) is arq's ``Worker`` with leases, wake-ups, per-worker heartbeats
and hand-back. What it changes in stock arq, and why (see ``FINDINGS.md``), each change in
its own module:

- **Claims** (``jobs.claims``): one Lua call takes due jobs, serving tenants in turn (one
  tenant's backlog holds another's job back by about one job's run time at most), and gives
  each a short in-progress *lease* (``JOB_LEASE_S``) instead of arq's "longest timeout +
  10 s"; the lease keeper (``jobs.leases``) renews running jobs' leases every quarter
  lease, so a killed worker's job is free again when its lease runs out.
- **No polling**: an idle worker blocks on ``BLPOP jobs:wake`` (``jobs.wakeups``), which
  every enqueue pushes to, until the next thing it knows of is due: a deferred job (a cron
  job's next slot is one), the end of another worker's lease, or the fallback poll
  (``JOB_IDLE_POLL_S``). A claim wakes an idle peer to watch the new leases run out.
- **Heartbeats**: one key per worker with a TTL (``jobs.heartbeat``), not arq's one shared
  health-check key that any closing worker deletes (arq's ``record_health`` never runs).
- **Stopping** (``Worker.stop``): take no new jobs, let running ones finish within ``JOB_GRACE_S``,
  then cancel the rest and hand them back, due at once and without counting the try.
- **Redis outages** do not end it: every loop, renewal and finish retries with capped,
  jittered backoff (``jobs.outage`` logs when Redis is lost and when it is back). A run is
  recorded only while its lease holds this claim's token (``jobs.finishing``); one whose
  lease ran out runs again elsewhere. Only refused credentials end the main loop.
- Jobs and results are JSON (``jobs.serialization``), never pickle.
- **Cron** (``jobs.cron``) in place of arq's: with ``ENABLE_CRON`` the worker runs cron
  runs (jobs named ``cron:...``) and records their ends (``jobs.cron_runner``); without it,
  its claims pass them by.

Every arq option comes from ``WorkerSettings`` (``jobs.worker_settings``); ``jobs.running``
builds and runs workers. What else the worker relies on in arq is pinned by
``tests/jobs/test_arq_contract.py``.
"""
