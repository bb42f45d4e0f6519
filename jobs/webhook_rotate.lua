-- Give a tenant a new webhook signing-secret generation; the current one becomes the
-- previous one, still valid for the overlap window (none when the window is 0).
--
-- KEYS[1]  jobs:webhooks:<tenant>   hash: generation, previous, previous_until_ms, receivers
-- ARGV[1]  the new generation (random hex)
-- ARGV[2]  now (ms)
-- ARGV[3]  overlap window (ms)
-- Returns the time (ms) until which the previous generation stays valid, or 0 when none does.

local current = redis.call('HGET', KEYS[1], 'generation')
local overlap = tonumber(ARGV[3])
if current and overlap > 0 then
  local until_ms = tonumber(ARGV[2]) + overlap
  redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'previous', current, 'previous_until_ms', until_ms)
  return until_ms
end
redis.call('HSET', KEYS[1], 'generation', ARGV[1])
redis.call('HDEL', KEYS[1], 'previous', 'previous_until_ms')
return 0
