-- Shared by every script (concatenated in front of each one when it is loaded).
-- Amounts are integer pico-dollars and times integer milliseconds of the server's clock.

local DAY_MS = 86400000

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers go to Redis as plain digits: Lua's own formatting may switch to an exponent.
local function int(n)
  return string.format('%.0f', n)
end

local function num(value)
  return tonumber(value) or 0
end

-- A hold: "usd|tokens|counted|day|daily|feature" (day: UTC day number; daily: 1 if the daily window holds it too;
-- feature: digest of the feature window holding it, or empty).
local function hold_record(usd, tokens, counted, day, daily, feature)
  return table.concat({int(usd), int(tokens), int(counted), int(day), daily, feature}, '|')
end

local function parse_hold(record)
  local usd, tokens, counted, day, daily, feature =
    string.match(record, '^(%-?%d+)|(%d+)|(%d+)|(%-?%d+)|(%d)|(%x*)$')
  return tonumber(usd), tonumber(tokens), tonumber(counted), tonumber(day), daily, feature
end

local function decrease(state, field, amount)
  if amount ~= 0 and redis.call('HINCRBY', state, field, int(-amount)) < 0 then
    redis.call('HSET', state, field, 0)
  end
end

-- Gives a hold back. It may outlive its state (ended or expired session): then there is nothing to give back to,
-- and recreating the state here would leave a key without a TTL.
local function release(state, holds, expiries, call_id)
  local record = redis.call('HGET', holds, call_id)
  if not record then
    return nil
  end
  redis.call('HDEL', holds, call_id)
  redis.call('ZREM', expiries, call_id)
  if redis.call('EXISTS', state) == 1 then
    local usd, tokens, counted = parse_hold(record)
    decrease(state, 'held', usd)
    decrease(state, 'held_tokens', tokens)
    decrease(state, 'held_calls', counted)
  end
  return record
end

-- Expired holds are given back by whichever script next reads the scope, so a killed worker's holds free their
-- budget without any sweeper.
local function purge(state, holds, expiries, now)
  local due = redis.call('ZRANGEBYSCORE', expiries, '-inf', now)
  for _, call_id in ipairs(due) do
    release(state, holds, expiries, call_id)
  end
end

