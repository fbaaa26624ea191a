-- Give back one call's hold in one scope: the compensation of a reservation another scope denied, or the
-- release of a hold taken on an earlier day.
-- KEYS: state, holds, expiries of the scope.
-- ARGV: call_id, last_activity the reservation set (empty = none), last_activity before it (empty = none):
--       a session's last activity is put back unless something newer has replaced it since.
-- Reply: 1 if a hold was given back, else 0.
local state, holds, expiries = KEYS[1], KEYS[2], KEYS[3]
local now = server_ms()
purge(state, holds, expiries, now)
local record = release(state, holds, expiries, ARGV[1])
if ARGV[2] ~= '' and redis.call('HGET', state, 'last_activity') == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('HDEL', state, 'last_activity')
  else
    redis.call('HSET', state, 'last_activity', ARGV[3])
  end
end
if record then
  return 1
end
return 0
