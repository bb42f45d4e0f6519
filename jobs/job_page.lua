-- A page of a tenant's jobs, newest first, with their states (job_state.lua), in one call.
-- Index entries whose job is gone (neither a result nor a job record) are dropped from the
-- index on the way and not answered.
--
-- Job keys are built here from their prefixes, as claim.lua builds leases: the page's ids
-- are only known inside the script.
--
-- KEYS[1]  jobs:index:<tenant>   the tenant's job ids by enqueue time (µs)
-- KEYS[2]  arq:queue
-- ARGV[1]  the newest enqueue time (µs) to start from, or '+inf'
-- ARGV[2]  '' to start at ARGV[1]; else the id of the previous page's last entry, whose
--          enqueue time is ARGV[1]: entries of that time are taken only after it (ids
--          descending, bytewise, as the sorted set orders them)
-- ARGV[3]  live jobs answered at most
-- ARGV[4]  index entries examined at most (a gone job counts)
-- ARGV[5]  result key prefix (arq:result:)
-- ARGV[6]  job key prefix (arq:job:)
-- ARGV[7]  in-progress key prefix (arq:in-progress:)
-- ARGV[8]  retry key prefix (arq:retry:)
-- Returns {more, last score, last id, id1, score1, result1, job1, lease1, due1, tries1, id2, ...}:
-- more is 1 when entries follow the last one examined (whose score and id make the next
-- page's cursor; '' when none was), else 0.

local index, queue = KEYS[1], KEYS[2]
local newest, after = ARGV[1], ARGV[2]
local want, scan_max = tonumber(ARGV[3]), tonumber(ARGV[4])
local result_prefix, job_prefix, lease_prefix, retry_prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local chunk = 100

-- Bytewise a < b: the order of equal-score members in a sorted set (Lua's own < follows
-- the server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local reply = {0, '', ''}
local found, examined, offset = 0, 0, 0
local gone = {}
local stop = false
repeat
  local rows = redis.call('ZREVRANGEBYSCORE', index, newest, '-inf', 'WITHSCORES', 'LIMIT', offset, chunk)
  for i = 1, #rows, 2 do
    local id, score = rows[i], rows[i + 1]
    if after == '' or tonumber(score) < tonumber(newest) or before(id, after) then
      if found >= want or examined >= scan_max then
        reply[1] = 1
        stop = true
        break
      end
      examined = examined + 1
      reply[2], reply[3] = score, id
      local state = job_state(result_prefix .. id, job_prefix .. id, lease_prefix .. id, retry_prefix .. id, queue, id)
      if state[1] or state[2] then
        found = found + 1
        reply[#reply + 1] = id
        reply[#reply + 1] = score
        for j = 1, 5 do
          reply[#reply + 1] = state[j]
        end
      else
        gone[#gone + 1] = id
      end
    end
  end
  offset = offset + chunk
until stop or #rows < 2 * chunk
if #gone > 0 then
  redis.call('ZREM', index, unpack(gone))
end
return reply
