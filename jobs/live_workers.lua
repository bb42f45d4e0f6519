-- The heartbeats of the live workers; forget the ids whose heartbeat key has expired.
-- Atomic, so that a worker that comes back (SET, then SADD) is never forgotten by a
-- reader that saw its key missing a moment before.
--
-- KEYS[1]  jobs:workers        set of worker ids
-- ARGV[1]  heartbeat key prefix (jobs:worker:)
-- Returns the heartbeat values (JSON) of the live workers.

local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local beat = redis.call('GET', ARGV[1] .. id)
  if beat then
    live[#live + 1] = beat
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
