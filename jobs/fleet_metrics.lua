-- The fleet-wide values of /metrics that live in the jobs system's keys, in one call.
-- Reads only, and a bounded amount: running jobs are looked for among the first ARGV[3]
-- due entries of the queue (a claim takes the earliest due jobs, so that is where they are);
-- stale worker ids are counted out here and pruned by the cleanup job, not by a scrape.
--
-- KEYS[1]  arq:queue                  sorted set of job ids by due time (ms); running jobs stay in it
-- KEYS[2]  jobs:workers               set of worker ids
-- KEYS[3]  jobs:maintenance:findings  hash: check -> last finding (JSON)
-- KEYS[4]  jobs:cron                  hash of every cron job's state (see jobs/redis_keys.py)
-- ARGV[1]  now (ms)
-- ARGV[2]  in-progress key prefix (arq:in-progress:)
-- ARGV[3]  due entries examined for a lease at most
-- ARGV[4]  heartbeat key prefix (jobs:worker:)
-- Returns {queued, deferred, in_progress, live workers, findings (HGETALL's reply), cron state (HGETALL's reply)}.

local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local deferred = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local running = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  running = running + redis.call('EXISTS', ARGV[2] .. id)
end
local live = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  live = live + redis.call('EXISTS', ARGV[4] .. id)
end
return {due - running, deferred, running, live, redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4])}
