-- Claim due jobs for one worker: each claimed job gets its in-progress lease, atomically,
-- so no two workers start the same job. Also tells the worker when to look again.
--
-- KEYS[1]  arq:queue         sorted set of job ids by due time (ms); running jobs stay in it
-- KEYS[2]  jobs:wake         list idle workers block on
-- KEYS[3]  jobs:workers      set of worker ids (is there a peer to wake?)
-- ARGV[1]  now (ms)
-- ARGV[2]  how many jobs the worker can take
-- ARGV[3]  lease (ms)
-- ARGV[4]  in-progress key prefix (arq:in-progress:)
-- ARGV[5]  at most this many queue entries are examined
-- ARGV[6]  wake-up tokens kept at most
-- ARGV[7]  ids starting with this are passed by: neither taken nor waited for ("cron:" for a
--          worker without cron), or ""
-- ARGV[8..] ids of the jobs this worker is running (skipped without a look at their lease)
-- Returns {next_ms, id1, score1, id2, score2, ...}: the claimed jobs, and the earliest time
-- (ms) something may become claimable: the next due job, or the end of another worker's
-- lease (a worker killed mid-job leaves a lease that runs out). next_ms is -1 when nothing
-- is pending, and now when due jobs remain beyond the worker's capacity.
--
-- The value of an in-progress key is the time the job started (ms); arq only tests that
-- the key exists.

local now = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local lease = ARGV[3]
local prefix = ARGV[4]
local scan_max = tonumber(ARGV[5])
local chunk = 50
local skip = ARGV[7]
local mine = {}
for i = 8, #ARGV do
  mine[ARGV[i]] = true
end
local leased = {}

local claimed = {}
local count = 0
local next_ms = -1
local offset = 0
local done = false

local function sooner(at)
  if next_ms < 0 or at < next_ms then
    next_ms = at
  end
end

while not done and offset < scan_max do
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'WITHSCORES', 'LIMIT', offset, chunk)
  for i = 1, #entries, 2 do
    local id = entries[i]
    local score = tonumber(entries[i + 1])
    local passed = skip ~= '' and string.sub(id, 1, #skip) == skip
    if score > now and not passed then
      sooner(score)
      done = true
      break
    end
    if count >= capacity and not passed then
      sooner(now)
      done = true
      break
    end
    if not mine[id] and not passed then
      local key = prefix .. id
      if redis.call('SET', key, ARGV[1], 'NX', 'PX', lease) then
        count = count + 1
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = entries[i + 1]
      else
        leased[#leased + 1] = key
      end
    end
  end
  if #entries < 2 * chunk then
    done = true
  end
  offset = offset + chunk
end

-- Going idle: come back when the first of another worker's leases can run out.
if count < capacity then
  for _, key in ipairs(leased) do
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 then
      sooner(now + ttl)
    end
  end
end

-- Leases were just taken: wake one idle peer, which will then watch them run out.
if count > 0 and redis.call('SCARD', KEYS[3]) > 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
end

local reply = {next_ms}
for i = 1, #claimed do
  reply[#reply + 1] = claimed[i]
end
return reply
