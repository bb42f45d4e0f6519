-- What the dashboard shows of the last hour, in one call (reads only): jobs finished per
-- minute by outcome, the limiter's 429s per minute, the tenants nearest their limits and
-- with the most 429s in the last two minutes, and the latest failed tries. Key names are
-- built here from their prefixes, as fleet_metrics.lua does: for one Redis, not a cluster.
--
-- KEYS[1]  jobs:failures     list of failed tries (JSON), newest first
-- ARGV[1]  the first Unix minute shown
-- ARGV[2]  minutes shown
-- ARGV[3]  prefix of the jobs' per-minute hashes (jobs:minute:)
-- ARGV[4]  prefix of the limiter's per-minute hashes (rl:usage:)
-- ARGV[5]  prefix of the 429s-by-tenant sorted sets (rl:refused:)
-- ARGV[6]  prefix of the lowest-share-by-tenant sorted sets (rl:lowest:)
-- ARGV[7]  tenants read from each of those sets, per minute
-- ARGV[8]  failed tries read
-- Returns {
--   per minute, oldest first: complete, failed, retried, aborted (nil for none), 4 per minute,
--   per minute, oldest first: 429s (nil for none),
--   {most 429s of the minute before the last, WITHSCORES; the same of the last minute},
--   {lowest shares of the minute before the last, WITHSCORES; the same of the last minute},
--   the failed tries, newest first
-- }

local first = tonumber(ARGV[1])
local minutes = tonumber(ARGV[2])
local last = first + minutes - 1
local jobs, refused = {}, {}
for minute = first, last do
  local counts = redis.call('HMGET', ARGV[3] .. minute, 'complete', 'failed', 'retried', 'aborted')
  for i = 1, 4 do
    jobs[#jobs + 1] = counts[i]
  end
  refused[#refused + 1] = redis.call('HGET', ARGV[4] .. minute, 'refused')
end
local top = tonumber(ARGV[7]) - 1
local most_refused, lowest = {}, {}
for minute = last - 1, last do
  most_refused[#most_refused + 1] = redis.call('ZREVRANGE', ARGV[5] .. minute, 0, top, 'WITHSCORES')
  lowest[#lowest + 1] = redis.call('ZRANGE', ARGV[6] .. minute, 0, top, 'WITHSCORES')
end
local failures = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[8]) - 1)
return {jobs, refused, most_refused, lowest, failures}
