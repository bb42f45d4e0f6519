-- How many jobs are queued, deferred and in progress, for the metrics. Reads only, and
-- a bounded amount: the running jobs are looked for among the first ARGV[3] due entries
-- (a claim takes the earliest due jobs, so that is where they are).
--
-- KEYS[1]  arq:queue         sorted set of job ids by due time (ms); running jobs stay in it
-- ARGV[1]  now (ms)
-- ARGV[2]  in-progress key prefix (arq:in-progress:)
-- ARGV[3]  due entries examined for a lease at most
-- Returns {queued, deferred, in_progress}.

local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local deferred = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local running = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  running = running + redis.call('EXISTS', ARGV[2] .. id)
end
return {due - running, deferred, running}
