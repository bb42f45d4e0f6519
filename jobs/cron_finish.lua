-- Record the end of a cron run and create the job's next run, in one step: the next run
-- exists only once this one is over (runs of a job never overlap), and when slots came due
-- while it ran, the next run is due at once and stands for all of them (they coalesce).
--
-- KEYS[1]  arq:in-progress:<id>   the run's lease
-- KEYS[2]  arq:retry:<id>
-- KEYS[3]  arq:job:<id>
-- KEYS[4]  arq:abort
-- KEYS[5]  arq:queue
-- KEYS[6]  jobs:wake
-- KEYS[7]  jobs:cron              hash of every cron job's state (see jobs/redis_keys.py)
-- KEYS[8]  jobs:cron:runs:<name>  the job's last runs, newest first
-- KEYS[9]  arq:job:<next id>      (unused when ARGV[6] is "")
-- KEYS[10] jobs:ready:@system     the cron runs that claims look at
-- KEYS[11] jobs:tenants
-- ARGV[1]  the run's job id
-- ARGV[2]  the cron job's name
-- ARGV[3]  the run's record (JSON)
-- ARGV[4]  its outcome (complete, failed, aborted, missed)
-- ARGV[5]  runs kept
-- ARGV[6]  id of the next run, or "" for none (the job left this worker's schedule)
-- ARGV[7]  its payload
-- ARGV[8]  its due time (ms)
-- ARGV[9]  the end of the run (ms)
-- ARGV[10] wake-up tokens kept at most
-- ARGV[11] the system tenant (@system)
-- Returns the id of the next run, or "" when none was created: the job is paused, or this
-- run was not its current one (the job was forgotten, or its state was lost).

local state, name = KEYS[7], ARGV[2]
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[10], ARGV[1])
if redis.call('LPUSH', KEYS[8], ARGV[3]) > tonumber(ARGV[5]) then
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[5]) - 1)
end
redis.call('HINCRBY', state, name .. ':n:' .. ARGV[4], 1)
if ARGV[4] == 'complete' then
  redis.call('HSET', state, name .. ':ok', ARGV[9])
end

local function no_next()
  if redis.call('EXISTS', KEYS[10]) == 0 then
    redis.call('ZREM', KEYS[11], ARGV[11])
  end
  return ''
end

if redis.call('HGET', state, name) ~= ARGV[1] then
  return no_next()
end
redis.call('HDEL', state, name)
if ARGV[6] == '' or redis.call('HEXISTS', state, name .. ':paused') == 1 then
  return no_next()
end
redis.call('SET', KEYS[9], ARGV[7])
redis.call('ZADD', KEYS[5], ARGV[8], ARGV[6])
redis.call('ZADD', KEYS[10], ARGV[8], ARGV[6])
redis.call('ZADD', KEYS[11], 'NX', 0, ARGV[11])
redis.call('HSET', state, name, ARGV[6])
-- Idle workers wait for what they knew of when they last looked: tell one about this run.
wake(KEYS[6], ARGV[10])
return ARGV[6]
