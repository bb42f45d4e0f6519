--[[
Prelude of the token bucket on Redis Cluster (script.py's CROSS_SLOT_SCRIPT): one call decides
the callers of every hash slot one primary serves, though a cluster refuses declared keys of
two slots. So the call declares no keys and brings them in ARGV; this prelude puts them back
where token_bucket.lua, which follows it, reads them.

KEYS   none
ARGV   [1] the number of keys N, [2 .. N+1] the keys, then token_bucket.lua's ARGV
The script is flagged allow-cross-slot-keys: Redis checks each key it touches is served by
this node and fails the call otherwise (a slot on the move); token_bucket.lua reads every key
before it writes any, so a call that fails so has changed nothing.
]]
local KEYS, ARGV = (function(all)
  local count = tonumber(all[1])
  local keys, args = {}, {}
  for i = 1, count do keys[i] = all[1 + i] end
  for i = count + 2, #all do args[#args + 1] = all[i] end
  return keys, args
end)(ARGV)
