-- Record the hold of a call outside any session (the windows have admitted it), so that its settle knows what
-- it held and where.
-- KEYS: the call's key. ARGV: usd, hold_expiry_ms (empty = now + hold_ttl), hold_ttl_ms, day, daily (0|1), feature.
-- Reply: now.
local call = KEYS[1]
local now = server_ms()
if redis.call('HEXISTS', call, 'settled') == 1 then
  return now
end
local expiry = tonumber(ARGV[2]) or now + tonumber(ARGV[3])
redis.call('HSET', call, 'hold', hold_record(tonumber(ARGV[1]), 0, 0, tonumber(ARGV[4]), ARGV[5], ARGV[6]),
  'expiry', int(expiry))
redis.call('PEXPIREAT', call, int(expiry))
return now
