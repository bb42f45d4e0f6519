-- Wake one idle worker: a token on the wake list its BLPOP waits on (jobs.wakeups), for the
-- scripts that make work claimable (load_script(..., include=["wake"]) puts this before them).
--
-- wake(list_key, most) pushes a token unless the list already holds `most`: tokens are all
-- alike, and a full list has no worker blocked on it (under load every worker is busy and
-- nobody pops), so a length check (O(1)) replaces a push and a trim.

local function wake(list_key, most)
  if redis.call('LLEN', list_key) < tonumber(most) then
    redis.call('LPUSH', list_key, '1')
  end
end
