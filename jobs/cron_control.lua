-- An operator's command on one cron job: pause it, resume it, or run it now.
--
-- KEYS[1]  jobs:cron     hash of every cron job's state (see jobs/redis_keys.py)
-- KEYS[2]  arq:queue
-- KEYS[3]  jobs:wake
-- KEYS[4]  jobs:ready:@system   the cron runs that claims look at
-- KEYS[5]  jobs:tenants
-- ARGV[1]  "pause", "resume" or "run"
-- ARGV[2]  the cron job's name
-- ARGV[3]  arq:job: prefix
-- ARGV[4]  arq:in-progress: prefix
-- ARGV[5]  id, ARGV[6] payload, ARGV[7] due time (ms) of the run to create: for "resume"
--          the next slot, for "run" a run-now due at once
-- ARGV[8]  wake-up tokens kept at most
-- ARGV[9]  the system tenant (@system)
-- Returns
--   pause:  "paused": its pending run is removed; a running run finishes and has no successor
--   resume: "resumed" (it has a pending run again), or "not-paused" (nothing done)
--   run:    "queued" (the run-now takes the place of the pending run: no overlap, and the
--           schedule goes on after it), or "running" (a run is in progress: nothing done)

local state, queue, name = KEYS[1], KEYS[2], ARGV[2]
local current = redis.call('HGET', state, name)
local running = current and redis.call('EXISTS', ARGV[4] .. current) == 1

local function drop_current()
  redis.call('ZREM', queue, current)
  redis.call('ZREM', KEYS[4], current)
  redis.call('DEL', ARGV[3] .. current)
  redis.call('HDEL', state, name)
end

local function create()
  redis.call('SET', ARGV[3] .. ARGV[5], ARGV[6])
  redis.call('ZADD', queue, ARGV[7], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[5])
  redis.call('ZADD', KEYS[5], 'NX', 0, ARGV[9])
  redis.call('HSET', state, name, ARGV[5])
  wake(KEYS[3], ARGV[8])
end

if ARGV[1] == 'pause' then
  redis.call('HSET', state, name .. ':paused', '1')
  if current and not running then
    drop_current()
  end
  return 'paused'
end

if ARGV[1] == 'resume' then
  if redis.call('HDEL', state, name .. ':paused') == 0 then
    return 'not-paused'
  end
  if not current then
    create()
  end
  return 'resumed'
end

if running then
  return 'running'
end
if current then
  drop_current()
end
create()
return 'queued'
