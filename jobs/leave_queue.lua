-- A job leaves for good (finished, or aborted before it started): off arq's queue and its
-- tenant's unfinished jobs, and the tenant off the tenants with unfinished jobs when that was
-- its last. For the scripts that end a job (load_script(..., include=["leave_queue"]) puts
-- this before them); never run alone.
--
-- leave_queue(queue_key, ready_key, tenants_key, id, tenant): arq:queue,
-- jobs:ready:<tenant>, jobs:tenants, the job's id and its tenant. Returns nothing.

local function leave_queue(queue_key, ready_key, tenants_key, id, tenant)
  redis.call('ZREM', queue_key, id)
  redis.call('ZREM', ready_key, id)
  if redis.call('EXISTS', ready_key) == 0 then
    redis.call('ZREM', tenants_key, tenant)
  end
end
