-- Settle a call outside any session, exactly once per call id.
-- KEYS: the call's key. ARGV: cost (empty = unknown: charge max(estimate, hold)), estimate, settled_ttl_ms.
-- Reply: {already, charged, now, hold_day, hold_daily, hold_feature}
local call = KEYS[1]
local now = server_ms()
local c = redis.call('HMGET', call, 'settled', 'hold', 'expiry')
if c[1] then
  return {1, '0', now, -1, '0', ''}
end
local held, hold_day, hold_daily, hold_feature = 0, -1, '0', ''
if c[2] then
  local usd, _, _, day, daily, feature = parse_hold(c[2])
  hold_day, hold_daily, hold_feature = day, daily, feature
  if num(c[3]) > now then
    held = usd
  end
end
local charged = tonumber(ARGV[1])
if not charged then
  charged = math.max(tonumber(ARGV[2]), held)
end
redis.call('DEL', call)
redis.call('HSET', call, 'settled', '1')
redis.call('PEXPIRE', call, ARGV[3])
return {0, int(charged), now, hold_day, hold_daily, hold_feature}
