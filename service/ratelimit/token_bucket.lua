--[[
Token buckets: check and spend, all or none, for one or more decisions in one call.

Every number is an integer, so that no fraction of a token is ever lost: a bucket counts
in "units" of 1 / (1e6 * q) token, where per_second = p / q is the refill rate as a
fraction; then one microsecond refills exactly p units. policy.py converts; script.py frames.

KEYS   every bucket key of every decision, in order (all in one hash slot: rl:{caller}:name)
ARGV   [1] now in microseconds, or "" to use Redis TIME (the test seam: tests drive a clock)
       [2] number of decisions D
       then per decision: R, the number of its leading buckets that are only read (0: spend
         them all, B: read them all), the number of buckets B,
         then per bucket: capacity_units, refill_units_per_us, cost_units, enforced (1, or 0 for shadow)
Stored per key: the string "<tokens_units> <last_us>"; a missing key is a full bucket.
The key expires (PX) when the bucket would be full again, so idle callers cost no memory.

Returns a flat array, per decision: admitted (1/0), then per bucket:
  ok (1 when the bucket holds cost), remaining_units, full_in_us (until full again),
  retry_in_us (until it holds cost again: 0 when ok, -1 never: cost above capacity).
A refused decision changes nothing. A shadow bucket never refuses; it spends when it can.
A read-only bucket (one of a decision's first R) is reported but neither spends nor refuses.
A clock that steps back refills nothing: the stored time never moves backwards.
]]

local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local state = {}   -- key -> {tokens, last, capacity, rate, dirty}
local out = {}
local argi = 3
local keyi = 1

local function load(key, capacity, rate)
  local s = state[key]
  if s == nil then
    local raw = redis.call("GET", key)
    local tokens, last = capacity, now
    if raw then
      local a, b = string.match(raw, "^(%d+) (%d+)$")
      if a then
        tokens, last = tonumber(a), tonumber(b)
      end
    end
    s = { tokens = tokens, last = last, dirty = false }
    state[key] = s
  end
  if now > s.last then
    local gained = (now - s.last) * rate
    if s.tokens + gained > capacity then
      s.tokens = capacity
    else
      s.tokens = s.tokens + gained
    end
    s.last = now
  elseif s.tokens > capacity then
    s.tokens = capacity   -- the policy shrank since the key was written
  end
  s.capacity, s.rate = capacity, rate
  return s
end

-- Per bucket of the decision at hand, reused from one decision to the next (no table per bucket).
local b_state, b_cost, b_ok, b_spends = {}, {}, {}, {}
local n = 0   -- #out, counted: the length operator searches for the border each time
for _ = 1, tonumber(ARGV[2]) do
  local read_only = tonumber(ARGV[argi])
  local count = tonumber(ARGV[argi + 1])
  argi = argi + 2
  local admitted = true
  for i = 1, count do
    local capacity = tonumber(ARGV[argi])
    local cost = tonumber(ARGV[argi + 2])
    local s = load(KEYS[keyi], capacity, tonumber(ARGV[argi + 1]))
    local ok = s.tokens >= cost and cost <= capacity
    local spends = i > read_only
    if spends and not ok and ARGV[argi + 3] == "1" then
      admitted = false
    end
    argi = argi + 4
    keyi = keyi + 1
    b_state[i], b_cost[i], b_ok[i], b_spends[i] = s, cost, ok, spends
  end
  n = n + 1
  out[n] = admitted and 1 or 0
  for i = 1, count do
    local s, cost, ok = b_state[i], b_cost[i], b_ok[i]
    if ok and admitted and b_spends[i] then
      s.tokens = s.tokens - cost
      s.dirty = true
    end
    local tokens, rate = s.tokens, s.rate
    local retry = 0
    if cost > s.capacity then
      retry = -1
    elseif tokens < cost then
      retry = math.ceil((cost - tokens) / rate)
    end
    out[n + 1] = ok and 1 or 0
    out[n + 2] = tokens
    out[n + 3] = math.ceil((s.capacity - tokens) / rate)
    out[n + 4] = retry
    n = n + 4
  end
end

for key, s in pairs(state) do
  if s.dirty then
    local full_in_ms = math.ceil((s.capacity - s.tokens) / s.rate / 1000)
    if full_in_ms < 1 then
      full_in_ms = 1
    end
    redis.call("SET", key, string.format("%d %d", s.tokens, s.last), "PX", full_in_ms)
  end
end

return out
