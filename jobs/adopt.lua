-- Put a job that arq's own enqueue_job wrote (into arq:queue only) into a tenant's ready
-- set, so that claims see it.
--
-- KEYS[1]  arq:queue
-- KEYS[2]  jobs:ready:<tenant>
-- KEYS[3]  jobs:tenants
-- ARGV[1]  job id
-- ARGV[2]  the tenant
-- Returns 1, or 0 when the job is no longer queued.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('ZADD', KEYS[3], 'NX', 0, ARGV[2])
return 1
