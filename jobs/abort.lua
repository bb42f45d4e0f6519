-- Abort a tenant's job. A job that has not started is finished here, as aborted; a running
-- job is flagged in arq's abort set, and its worker cancels it.
--
-- KEYS[1]  jobs:index:<tenant>   the tenant's jobs (ownership)
-- KEYS[2]  arq:job:<id>
-- KEYS[3]  arq:queue
-- KEYS[4]  arq:in-progress:<id>
-- KEYS[5]  arq:result:<id>
-- KEYS[6]  arq:abort
-- KEYS[7]  arq:retry:<id>
-- KEYS[8]  jobs:ready:<tenant>   the tenant's unfinished jobs
-- KEYS[9]  jobs:tenants
-- ARGV[1]  job id
-- ARGV[2]  now (ms)
-- ARGV[3]  result TTL (ms)
-- ARGV[4]  queue name (for the result)
-- ARGV[5]  the tenant
-- Returns {"missing"} (not this tenant's, or gone) or {"finished"}; or {"running"} or
-- {"aborted"} followed by the job's state as it is now (job_state.lua: result, job, lease,
-- due ms, tries), so that the caller answers with the job without reading it again.
-- leave_queue() is leave_queue.lua's (load_script puts it before this script).

local function with_state(outcome)
  local state = job_state(KEYS[5], KEYS[2], KEYS[4], KEYS[7], KEYS[3], ARGV[1])
  return {outcome, state[1], state[2], state[3], state[4], state[5]}
end

if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {'missing'}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {'finished'}
end
local raw = redis.call('GET', KEYS[2])
if not raw then
  return {'missing'}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
  return with_state('running')
end

local job = cjson.decode(raw)
local tries = tonumber(redis.call('GET', KEYS[7]) or '0')
local result = '{"t":' .. tries
  .. ',"f":' .. cjson.encode(job['f'])
  .. ',"a":[],"k":{}'
  .. ',"et":' .. string.format('%d', job['et'])
  .. ',"s":false'
  .. ',"r":{"type":"JobAborted","message":"the job was aborted before it started"}'
  .. ',"st":null,"ft":' .. ARGV[2]
  .. ',"q":' .. cjson.encode(ARGV[4])
  .. ',"id":' .. cjson.encode(ARGV[1])
  .. '}'
redis.call('SET', KEYS[5], result, 'PX', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[7])
leave_queue(KEYS[3], KEYS[8], KEYS[9], ARGV[1], ARGV[5])
return with_state('aborted')
