-- Claim due jobs for one worker, serving tenants in turn: each claimed job gets its
-- in-progress lease, atomically, so no two workers start the same job. Also tells the
-- worker when to look again.
--
-- Fairness: tenants are taken least recently looked at first; each pass over them takes
-- at most one job from each (its earliest due one), and passes repeat until the worker's
-- free slots are filled. Every tenant a claim looks at moves behind those it has not, so
-- a tenant's backlog delays another tenant's job by at most one job per tenant ahead of it.
--
-- KEYS[1]  jobs:tenants      tenants with unfinished jobs, by when a claim last looked at them
-- KEYS[2]  jobs:wake         list idle workers block on
-- KEYS[3]  jobs:workers      set of worker ids (is there a peer to wake?)
-- KEYS[4]  arq:queue         every unfinished job by due time (ms): the next due one is read here
-- ARGV[1]  now (ms)
-- ARGV[2]  how many jobs the worker can take
-- ARGV[3]  lease (ms)
-- ARGV[4]  in-progress key prefix (arq:in-progress:)
-- ARGV[5]  at most this many entries are examined (a tenant with nothing due counts one)
-- ARGV[6]  wake-up tokens kept at most
-- ARGV[7]  ready-set key prefix (jobs:ready:); a tenant's set holds its unfinished jobs by
--          due time, running ones included (their leases tell them apart)
-- ARGV[8]  a tenant this worker passes by ("@system", the cron runs, on a worker without
--          cron), or ""
-- ARGV[9]  the claiming worker's id
-- ARGV[10..] ids of the jobs whose lease this worker holds (skipped without a look at their lease)
-- Returns {next_ms, id1, score1, tenant1, id2, score2, tenant2, ...}: the claimed jobs, and
-- the earliest time (ms) something may become claimable: the next due job, or the end of
-- another worker's lease (a worker killed mid-job leaves a lease that runs out). next_ms is
-- -1 when nothing is pending, and now when the worker's free slots are all filled. Every
-- unfinished job is in a ready set, so with no tenant listed nothing else is read.
--
-- The value of an in-progress key is "<now ms>:<worker id>": when the job started, and a
-- token of this one claim (finish.lua and renew.lua act only while the lease still holds
-- it). arq only tests that the key exists.

local now = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local lease = ARGV[3]
local lease_prefix = ARGV[4]
local scan_max = tonumber(ARGV[5])
local ready_prefix = ARGV[7]
local holder = ARGV[1] .. ':' .. ARGV[9]
local chunk = 32
local mine = {}
for i = 10, #ARGV do
  mine[ARGV[i]] = true
end

local claimed = {}
local count = 0
local examined = 0
local leased = {}
local next_ms = -1

local function sooner(at)
  if next_ms < 0 or at < next_ms then
    next_ms = at
  end
end

-- Per tenant: the due entries read so far, the position in them, the offset of the next
-- read, and whether its due entries are all read.
local heads = {}

-- The tenant's earliest due job this worker can lease now, leased; nil when it has none.
local function take(tenant)
  local head = heads[tenant]
  if head == nil then
    head = {entries = {}, pos = 1, offset = 0, done = false}
    heads[tenant] = head
  end
  while examined < scan_max do
    if head.pos > #head.entries then
      if head.done then
        return nil
      end
      local key = ready_prefix .. tenant
      head.entries = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', head.offset, chunk)
      head.pos = 1
      head.offset = head.offset + chunk
      head.done = #head.entries < 2 * chunk
      if #head.entries == 0 then
        examined = examined + 1
        if head.offset == chunk and redis.call('EXISTS', key) == 0 then
          redis.call('ZREM', KEYS[1], tenant)  -- nothing unfinished: out of the rotation
        end
        return nil
      end
    end
    local id = head.entries[head.pos]
    local score = head.entries[head.pos + 1]
    head.pos = head.pos + 2
    examined = examined + 1
    if not mine[id] then
      local key = lease_prefix .. id
      if redis.call('SET', key, holder, 'NX', 'PX', lease) then
        return id, score
      end
      leased[#leased + 1] = key
    end
  end
  return nil
end

-- The earliest unfinished job is not due (running jobs keep their past due time): nothing
-- to claim and no lease to watch. An idle worker's claim is this one command, even while
-- a deferred job (such as a cron job's next slot) waits.
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #first == 0 then
  return {-1}
end
if tonumber(first[2]) > now then
  return {tonumber(first[2])}
end

local listed = redis.call('ZRANGE', KEYS[1], 0, scan_max - 1, 'WITHSCORES')
if #listed == 0 then
  return {-1}  -- no tenant has an unfinished job: nothing is pending
end
local active = {}
for i = 1, #listed, 2 do
  if listed[i] ~= ARGV[8] then
    active[#active + 1] = listed[i]
  end
end
-- The new place of each tenant looked at: behind every tenant, in the order looked at.
local turn = tonumber(listed[#listed])
if #listed == 2 * scan_max then
  turn = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
end
local places = {}

while count < capacity and #active > 0 and examined < scan_max do
  local again = {}
  for _, tenant in ipairs(active) do
    if count >= capacity or examined >= scan_max then
      break
    end
    local id, score = take(tenant)
    turn = turn + 1
    places[tenant] = turn
    if id then
      count = count + 1
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = tenant
      again[#again + 1] = tenant
    end
  end
  active = again
end

local moves = {}
for tenant, place in pairs(places) do
  moves[#moves + 1] = place
  moves[#moves + 1] = tenant
end
if #moves > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(moves))
end

if count >= capacity then
  sooner(now)
else
  -- Going idle: come back when the next deferred job is due, or when the first of
  -- another worker's leases can run out.
  local due = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #due > 0 then
    sooner(tonumber(due[2]))
  end
  for _, key in ipairs(leased) do
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 then
      sooner(now + ttl)
    end
  end
end

-- Leases were just taken: wake one idle peer, which will then watch them run out.
if count > 0 and redis.call('SCARD', KEYS[3]) > 1 then
  wake(KEYS[2], ARGV[6])
end

local reply = {next_ms}
for i = 1, #claimed do
  reply[#reply + 1] = claimed[i]
end
return reply
