-- One job of a tenant, in one call: its state (job_state.lua), or nothing when the job is
-- not in the tenant's index (another tenant's, or gone).
--
-- KEYS[1]  jobs:index:<tenant>   the tenant's jobs (ownership)
-- KEYS[2]  arq:result:<id>
-- KEYS[3]  arq:job:<id>
-- KEYS[4]  arq:in-progress:<id>
-- KEYS[5]  arq:retry:<id>
-- KEYS[6]  arq:queue
-- ARGV[1]  job id
-- Returns {} when the job is not the tenant's, else {result, job, lease, due ms, tries}.

if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {}
end
return job_state(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
