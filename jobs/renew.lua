-- Renew a worker's leases on its running jobs, and say which of them are to be aborted.
-- A lease is renewed only while it still holds this worker's claim: one that ran out (a
-- stall, Redis away) may belong to another worker now, and is left alone.
--
-- KEYS[1]  arq:abort              sorted set of job ids to abort
-- ARGV[1]  lease (ms)
-- ARGV[2]  in-progress key prefix (arq:in-progress:)
-- ARGV[3..] pairs: a running job's id, and its lease's value as claimed (claim.lua)
-- Returns {kept1, abort1, kept2, abort2, ...} in ARGV order: kept is 1 when the lease was
-- still this worker's (and now runs a whole lease again), abort is 1 when the job is in arq:abort.

local reply = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  local kept = 0
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    kept = 1
  end
  reply[#reply + 1] = kept
  reply[#reply + 1] = redis.call('ZSCORE', KEYS[1], ARGV[i]) and 1 or 0
end
return reply
