-- Take sessions found gone out of the activity index, unless one was active again since (a newer score than cutoff).
-- KEYS: the activity index. ARGV: cutoff_ms, then the members. Reply: the members taken out.
local index = KEYS[1]
local cutoff = tonumber(ARGV[1])
local removed = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', index, ARGV[i])
  if score and tonumber(score) < cutoff then
    redis.call('ZREM', index, ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
