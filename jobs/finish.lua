-- Record the end of one run of a job: arq's finish_job in one call, plus what the
-- project adds (a handed-back job gets its try back; a job that goes back to the queue
-- wakes a worker to schedule it; nothing is recorded, or counted, unless the lease is still
-- the finishing worker's: one whose lease ran out, while Redis was away say, may have been
-- claimed and run again by another worker).
--
-- KEYS[1]  arq:in-progress:<id>   the lease
-- KEYS[2]  arq:result:<id>
-- KEYS[3]  arq:retry:<id>         tries started
-- KEYS[4]  arq:job:<id>
-- KEYS[5]  arq:abort
-- KEYS[6]  arq:queue
-- KEYS[7]  jobs:wake
-- KEYS[8]  jobs:ready:<tenant>   the tenant's unfinished jobs
-- KEYS[9]  jobs:tenants
-- KEYS[10] jobs:minute:<Unix minute>   jobs finished this minute, by outcome (jobs/failures.py)
-- KEYS[11] jobs:failures               the latest failed tries (jobs/failures.py)
-- ARGV[1]  job id
-- ARGV[2]  "1" when the job is finished (result or failure), "0" when it goes back to the queue
-- ARGV[3]  the serialized result, or "" for none
-- ARGV[4]  result TTL (ms), or "" to keep it forever
-- ARGV[5]  ms to add to the job's due time (a retry's backoff), or ""
-- ARGV[6]  ms to keep the in-progress key (arq's cron jobs), or "" to delete it
-- ARGV[7]  "1" when the job is handed back on stop: its interrupted try is not counted
-- ARGV[8]  wake-up tokens kept at most
-- ARGV[9]  the job's tenant
-- ARGV[10] the outcome this end adds to the minute's count (complete, failed, retried, aborted), or ""
-- ARGV[11] seconds a minute's counts are kept
-- ARGV[12] the failed try's record (JSON), or "": listed with the job's payload (for a retry)
-- ARGV[13] failed tries kept
-- ARGV[14] the lease's value as the worker claimed it (claim.lua)
-- Returns 1 when recorded, 0 when the lease is no longer this claim's (nothing changed).
-- leave_queue() is leave_queue.lua's (load_script puts it before this script).

if redis.call('GET', KEYS[1]) ~= ARGV[14] then
  return 0
end

if ARGV[10] ~= '' then
  redis.call('HINCRBY', KEYS[10], ARGV[10], 1)
  redis.call('EXPIRE', KEYS[10], ARGV[11])
end
if ARGV[12] ~= '' then
  local failure = cjson.decode(ARGV[12])
  failure['job'] = redis.call('GET', KEYS[4])  -- read before a finished job's record is deleted below
  redis.call('LPUSH', KEYS[11], cjson.encode(failure))
  redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[13]) - 1)
end

if ARGV[6] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
else
  redis.call('DEL', KEYS[1])
end

if ARGV[2] == '1' then
  if ARGV[3] ~= '' then
    if ARGV[4] ~= '' then
      redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
    else
      redis.call('SET', KEYS[2], ARGV[3])
    end
  end
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('ZREM', KEYS[5], ARGV[1])
  leave_queue(KEYS[6], KEYS[8], KEYS[9], ARGV[1], ARGV[9])
else
  if ARGV[5] ~= '' then
    redis.call('ZINCRBY', KEYS[6], ARGV[5], ARGV[1])
    redis.call('ZINCRBY', KEYS[8], ARGV[5], ARGV[1])
  end
  if ARGV[7] == '1' then
    redis.call('DECR', KEYS[3])
  end
  wake(KEYS[7], ARGV[8])
end
return 1
