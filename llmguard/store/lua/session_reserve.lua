-- Admit a call against a session's caps and hold its estimate.
-- KEYS: state, holds, expiries of the session.
-- ARGV: call_id, session_id, usd, tokens, counted (0|1), budget, max_llm_calls, max_tool_calls, max_tokens
--       (caps: empty = off), hold_ttl_ms, session_ttl_ms, daily (0|1), feature digest (windows the client will hold).
-- Reply: {admitted, reason, spent, now, hold_expiry, last_activity before}
local state, holds, expiries = KEYS[1], KEYS[2], KEYS[3]
local call_id = ARGV[1]
local usd, tokens, counted = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local hold_ttl, session_ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
local now = server_ms()
purge(state, holds, expiries, now)

local created = redis.call('EXISTS', state) == 0
if created then
  redis.call('HSET', state, 'id', ARGV[2])
end
local s = redis.call('HMGET', state, 'spent', 'held', 'held_tokens', 'held_calls', 'llm_calls', 'tool_calls',
  'blocked', 'last_activity', 'tok:input', 'tok:cache_read', 'tok:cache_write', 'tok:output')
local spent_raw = s[1] or '0'
local spent = num(s[1])

-- The same reservation again (a command resent after a timeout) is admitted once.
local existing = redis.call('ZSCORE', expiries, call_id)
if existing then
  if created then
    redis.call('PEXPIRE', state, int(session_ttl))  -- never leave a key without a TTL
  end
  return {1, '', spent_raw, now, existing, ''}
end

-- Only a loop block is kept on the session (session_settle sets it); any other denial is for this call alone, as
-- the caps apply per call (spent + held + estimate <= cap): a later, smaller call may fit.
local reason = s[7]
if not reason then
  local budget, max_calls = tonumber(ARGV[6]), tonumber(ARGV[7])
  local max_tools, max_tokens = tonumber(ARGV[8]), tonumber(ARGV[9])
  if budget and spent + num(s[2]) + usd > budget then
    reason = 'session_budget'
  elseif max_calls and counted == 1 and num(s[5]) + num(s[4]) + 1 > max_calls then
    reason = 'session_llm_calls'
  elseif max_tools and num(s[6]) > max_tools then
    reason = 'session_tool_calls'
  elseif max_tokens and num(s[9]) + num(s[10]) + num(s[11]) + num(s[12]) + num(s[3]) + tokens > max_tokens then
    reason = 'session_tokens'
  end
end
if reason then
  if created then
    redis.call('PEXPIRE', state, int(session_ttl))
  end
  return {0, reason, spent_raw, now, 0, ''}
end

local expiry = now + hold_ttl
redis.call('HINCRBY', state, 'held', int(usd))
redis.call('HINCRBY', state, 'held_tokens', int(tokens))
redis.call('HINCRBY', state, 'held_calls', int(counted))
redis.call('HSET', state, 'last_activity', int(now))
redis.call('HSET', holds, call_id, hold_record(usd, tokens, counted, math.floor(now / DAY_MS), ARGV[12], ARGV[13]))
redis.call('ZADD', expiries, int(expiry), call_id)
redis.call('PEXPIRE', state, int(session_ttl))
-- Holds outlive a shorter session TTL so that a late settle still finds what it held.
redis.call('PEXPIRE', holds, int(math.max(session_ttl, hold_ttl)))
redis.call('PEXPIRE', expiries, int(math.max(session_ttl, hold_ttl)))
return {1, '', spent_raw, now, expiry, s[8] or ''}
