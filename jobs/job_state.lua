-- A job's state as the jobs API reads it (jobs.views), for the scripts that answer with
-- one (load_script(..., include=["job_state"]) puts this before them); never run alone.
--
-- job_state(result_key, job_key, lease_key, retry_key, queue_key, id) returns
-- {result, job, lease, due ms, tries} from arq's keys of job `id`, false for each one
-- absent: a finished job answers its result alone, and a job that is gone answers nothing.

local function job_state(result_key, job_key, lease_key, retry_key, queue_key, id)
  local result = redis.call('GET', result_key)
  if result then
    return {result, false, false, false, false}
  end
  local job = redis.call('GET', job_key)
  if not job then
    return {false, false, false, false, false}
  end
  return {
    false, job, redis.call('GET', lease_key), redis.call('ZSCORE', queue_key, id), redis.call('GET', retry_key)
  }
end
