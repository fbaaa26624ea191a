-- Replace a call's hold by its cost, exactly once per call id, and run loop detection.
-- KEYS: state, holds, expiries, settled, hist of the session.
-- ARGV: call_id, session_id, cost (empty = unknown: charge max(estimate, hold)), estimate, counted (0|1),
--       session_ttl_ms, loop_history, loop_repeat_threshold, loop_warn_threshold, n, then n pairs
--       (token type, count), then the digests of the call's tool-call signatures.
-- Reply: {already, charged, spent, repeats, warning, blocked, now, hold_day, hold_daily, hold_feature}
-- (warning: 1 if this settle took the session to the warn threshold for the first time)
local state, holds, expiries, settled, hist = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local call_id = ARGV[1]
local session_ttl = tonumber(ARGV[6])
local now = server_ms()
purge(state, holds, expiries, now)
redis.call('ZREMRANGEBYSCORE', settled, '-inf', now)
if redis.call('ZSCORE', settled, call_id) then
  return {1, '0', '0', 0, 0, '', now, -1, '0', ''}
end
redis.call('ZADD', settled, int(now + session_ttl), call_id)

-- The same rule as llmguard.policy.loop_repeats: the most-repeated cycle (period 1..5) at the end of the history;
-- a period-k block that is itself a shorter cycle is skipped.
local function same(h, a, b, length)
  for i = 0, length - 1 do
    if h[a + i] ~= h[b + i] then
      return false
    end
  end
  return true
end

local function is_cycle(h, start, length, period)
  for i = 0, length - 1 do
    if h[start + i] ~= h[start + (i % period)] then
      return false
    end
  end
  return true
end

local function loop_repeats(h)
  local n = #h
  local best = 0
  if n > 0 then
    best = 1
  end
  for period = 1, 5 do
    if 2 * period > n then
      break
    end
    local tail = n - period + 1
    local shorter = false
    for smaller = 1, period - 1 do
      if period % smaller == 0 and is_cycle(h, tail, period, smaller) then
        shorter = true
        break
      end
    end
    if not shorter then
      local repeats = 1
      while (repeats + 1) * period <= n and same(h, n - (repeats + 1) * period + 1, tail, period) do
        repeats = repeats + 1
      end
      if repeats > best then
        best = repeats
      end
    end
  end
  return best
end

local held, hold_day, hold_daily, hold_feature = 0, -1, '0', ''
local record = release(state, holds, expiries, call_id)
if record then
  local usd, _, _, day, daily, feature = parse_hold(record)
  held, hold_day, hold_daily, hold_feature = usd, day, daily, feature
end
local charged = tonumber(ARGV[3])
if not charged then
  charged = math.max(tonumber(ARGV[4]), held)
end

if redis.call('EXISTS', state) == 0 then
  redis.call('HSET', state, 'id', ARGV[2])
end
redis.call('HINCRBY', state, 'spent', int(charged))
local n = tonumber(ARGV[10])
for i = 0, n - 1 do
  redis.call('HINCRBY', state, 'tok:' .. ARGV[11 + 2 * i], ARGV[12 + 2 * i])
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', state, 'llm_calls', 1)
end
local first = 11 + 2 * n
local digests = #ARGV - first + 1
redis.call('HINCRBY', state, 'tool_calls', int(digests))
for i = first, #ARGV do
  redis.call('RPUSH', hist, ARGV[i])
end
local keep = tonumber(ARGV[7])
if keep > 0 then
  redis.call('LTRIM', hist, int(-keep), -1)
else
  redis.call('DEL', hist)
end
local repeats = 0
if digests > 0 then
  repeats = loop_repeats(redis.call('LRANGE', hist, 0, -1))
end
if repeats >= tonumber(ARGV[8]) then
  redis.call('HSET', state, 'blocked', 'loop_detected')
end
local warn = tonumber(ARGV[9])
local warning = 0
if warn > 0 and repeats >= warn and redis.call('HSETNX', state, 'loop_warned', '1') == 1 then
  warning = 1
end
redis.call('HSET', state, 'last_activity', int(now))
redis.call('PEXPIRE', state, int(session_ttl))
redis.call('PEXPIRE', settled, int(session_ttl))
redis.call('PEXPIRE', hist, int(session_ttl))
local s = redis.call('HMGET', state, 'spent', 'blocked')
return {0, int(charged), s[1], repeats, warning, s[2] or '', now, hold_day, hold_daily, hold_feature}
