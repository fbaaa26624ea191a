-- Admit a call against a window's cap (a UTC day, or a feature's UTC day) and hold its estimate.
-- KEYS: state, holds, expiries of the window.
-- ARGV: call_id, usd, cap, hold_expiry_ms (empty = now + hold_ttl), hold_ttl_ms, window_ttl_ms,
--       day (empty = do not check; else the UTC day number the client took the keys from).
-- Reply: {status, spent, now, hold_expiry}; status 1 admitted, 0 denied, -1 the keys are for another day
-- (then spent is the server's day number and nothing was written).
local state, holds, expiries = KEYS[1], KEYS[2], KEYS[3]
local call_id = ARGV[1]
local usd, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = server_ms()
local today = math.floor(now / DAY_MS)
if ARGV[7] ~= '' and tonumber(ARGV[7]) ~= today then
  return {-1, int(today), now, 0}
end
purge(state, holds, expiries, now)

local w = redis.call('HMGET', state, 'spent', 'held')
local spent_raw = w[1] or '0'
local existing = redis.call('ZSCORE', expiries, call_id)
if existing then
  return {1, spent_raw, now, existing}
end
if num(w[1]) + num(w[2]) + usd > cap then
  return {0, spent_raw, now, 0}
end

local expiry = tonumber(ARGV[4]) or now + tonumber(ARGV[5])
local window_ttl = int(ARGV[6])
redis.call('HINCRBY', state, 'held', int(usd))
redis.call('HSET', holds, call_id, hold_record(usd, 0, 0, today, '0', ''))
redis.call('ZADD', expiries, int(expiry), call_id)
redis.call('PEXPIRE', state, window_ttl)
redis.call('PEXPIRE', holds, window_ttl)
redis.call('PEXPIRE', expiries, window_ttl)
return {1, spent_raw, now, expiry}
