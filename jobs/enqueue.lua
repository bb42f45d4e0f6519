-- Enqueue one job in arq's format, index it for its tenant, record its idempotency key
-- and wake one idle worker, all at once; unless the tenant already has its cap of
-- unfinished jobs.
--
-- KEYS[1]  arq:job:<id>            the job (arq's JSON payload)
-- KEYS[2]  jobs:index:<tenant>     sorted set of the tenant's job ids by enqueue time (µs)
-- KEYS[3]  jobs:idempotency:...    the idempotency record (unused when ARGV[7] is "")
-- KEYS[4]  jobs:ready:<tenant>     the tenant's unfinished jobs by due time (ms)
-- KEYS[5]  arq:queue               sorted set of job ids by due time (ms)
-- KEYS[6]  jobs:wake               list idle workers block on
-- KEYS[7]  jobs:tenants            tenants with unfinished jobs, by when a claim last looked at them
-- ARGV[1]  job id
-- ARGV[2]  payload
-- ARGV[3]  due time (ms)
-- ARGV[4]  job key TTL (ms)
-- ARGV[5]  enqueue time (µs: newest first stays exact for jobs sent within a millisecond)
-- ARGV[6]  index entries older than this (µs) are dropped
-- ARGV[7]  idempotency record, or "" for none
-- ARGV[8]  the tenant
-- The same for every call of a process (queue.py frames them once):
-- ARGV[9]  index TTL (s)
-- ARGV[10] unfinished jobs a tenant may have at most
-- ARGV[11] idempotency record TTL (s)
-- ARGV[12] wake-up tokens kept at most
-- ARGV[13] result key prefix (arq:result:)
-- ARGV[14] job key prefix (arq:job:)
-- ARGV[15] in-progress key prefix (arq:in-progress:)
-- ARGV[16] retry key prefix (arq:retry:)
-- Returns {1} when the job was enqueued; {0, record, result, job, lease, due ms, tries}
-- when the idempotency key already names a job, with that job's state (job_state.lua; only
-- {0, record} when the job is no longer in the tenant's index), so that a replay is
-- answered in this one call; {2, unfinished} when the tenant is at its cap (nothing is
-- written then).

if ARGV[7] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local ok, record = pcall(cjson.decode, existing)
    local id = ok and type(record) == 'table' and record['job_id']
    if type(id) ~= 'string' or not redis.call('ZSCORE', KEYS[2], id) then
      return {0, existing}
    end
    local state = job_state(ARGV[13] .. id, ARGV[14] .. id, ARGV[15] .. id, ARGV[16] .. id, KEYS[5], id)
    return {0, existing, state[1], state[2], state[3], state[4], state[5]}
  end
end
local unfinished = redis.call('ZCARD', KEYS[4])
if unfinished >= tonumber(ARGV[10]) then
  return {2, unfinished}
end
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[11])
end

redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
-- A tenant that had nothing unfinished comes first at the next claim.
redis.call('ZADD', KEYS[7], 'NX', 0, ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[9])
wake(KEYS[6], ARGV[12])
return {1}
