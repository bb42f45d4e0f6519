-- Forget the worker ids whose heartbeat key has expired, one SSCAN batch at a time (the
-- cleanup maintenance job). Atomic per batch, as live_workers.lua is, so that a worker
-- that comes back (SET, then SADD) is never forgotten by a look that saw its key missing.
--
-- KEYS[1]  jobs:workers        set of worker ids
-- ARGV[1]  heartbeat key prefix (jobs:worker:)
-- ARGV[2]  SSCAN cursor
-- ARGV[3]  SSCAN COUNT hint
-- Returns {next cursor ("0" when the set has been gone through), ids examined, ids removed}.

local reply = redis.call('SSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
local removed = 0
for _, id in ipairs(reply[2]) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], id)
  end
end
return {reply[1], #reply[2], removed}
