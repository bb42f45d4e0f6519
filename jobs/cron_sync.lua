-- Give every cron job of a worker's schedule its one pending run, atomically: workers that
-- start together create one run per job, not one each.
--
-- KEYS[1]  jobs:cron        hash of every cron job's state (see jobs/redis_keys.py)
-- KEYS[2]  arq:queue
-- KEYS[3]  jobs:wake        list idle workers block on
-- KEYS[4]  jobs:ready:@system   the cron runs that claims look at (the system tenant's ready set)
-- KEYS[5]  jobs:tenants
-- ARGV[1]  "full" when a worker starts: besides creating missing runs, replace the pending run
--          of a job whose schedule text changed, and forget jobs that left the schedule;
--          "heal" (now and then): only create missing runs (so a worker of an older release,
--          still running during a deploy, never undoes what a newer one did)
-- ARGV[2]  arq:job: prefix
-- ARGV[3]  arq:in-progress: prefix
-- ARGV[4]  jobs:cron:runs: prefix
-- ARGV[5]  wake-up tokens kept at most
-- ARGV[6]  the system tenant (@system)
-- ARGV[7..] five per cron job: name, schedule text, and the id, payload and due time (ms)
--          of the run to create when it has none
-- Returns the names of the jobs given a new pending run.
--
-- A steady-state "heal" costs HMGET and ZMSCORE, whatever the number of jobs.

local state, queue, ready = KEYS[1], KEYS[2], KEYS[4]
local full = ARGV[1] == 'full'
local job_prefix, lease_prefix, runs_prefix = ARGV[2], ARGV[3], ARGV[4]

local jobs, fields = {}, {}
for i = 7, #ARGV, 5 do
  local name = ARGV[i]
  jobs[#jobs + 1] = {name = name, schedule = ARGV[i + 1], id = ARGV[i + 2], payload = ARGV[i + 3], due = ARGV[i + 4]}
  fields[#fields + 1] = name
  fields[#fields + 1] = name .. ':paused'
  fields[#fields + 1] = name .. ':schedule'
end

local function running(id)
  return redis.call('EXISTS', lease_prefix .. id) == 1
end

local function drop(id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', ready, id)
  redis.call('DEL', job_prefix .. id)
end

local created = {}
if #jobs > 0 then
  local values = redis.call('HMGET', state, unpack(fields))
  local current = {}
  for k = 1, #jobs do
    current[k] = values[3 * k - 2] or ''  -- '' is never a member
  end
  local scores = redis.call('ZMSCORE', ready, unpack(current))
  for k, job in ipairs(jobs) do
    local id, paused, schedule = values[3 * k - 2], values[3 * k - 1], values[3 * k]
    if not paused then
      local pending = id and scores[k]
      if pending and full and schedule ~= job.schedule and string.sub(id, -7) ~= ':manual' and not running(id) then
        drop(id)
        pending = false
      elseif id and not pending then
        drop(id)  -- no longer among the runs claims look at: it can never start
      end
      if not pending then
        redis.call('SET', job_prefix .. job.id, job.payload)
        redis.call('ZADD', queue, job.due, job.id)
        redis.call('ZADD', ready, job.due, job.id)
        redis.call('ZADD', KEYS[5], 'NX', 0, ARGV[6])
        redis.call('HSET', state, job.name, job.id)
        created[#created + 1] = job.name
      end
    end
    if full and schedule ~= job.schedule then
      redis.call('HSET', state, job.name .. ':schedule', job.schedule)
    end
  end
end

if full then
  local known = {}
  for _, job in ipairs(jobs) do
    known[job.name] = true
  end
  for _, field in ipairs(redis.call('HKEYS', state)) do
    local name = string.match(field, '^[^:]+')
    if not known[name] then
      if field == name then
        local id = redis.call('HGET', state, name)
        if not running(id) then
          drop(id)
        end
      end
      redis.call('HDEL', state, field)
      redis.call('DEL', runs_prefix .. name)
    end
  end
end

if #created > 0 then
  wake(KEYS[3], ARGV[5])
end
return created
