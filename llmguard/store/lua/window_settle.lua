-- Charge a settled call to a window, giving back the hold it took there (if it took one on this window).
-- KEYS: state, holds, expiries of the window. ARGV: call_id, charged, window_ttl_ms.
-- Reply: the window's spent.
local state, holds, expiries = KEYS[1], KEYS[2], KEYS[3]
local now = server_ms()
purge(state, holds, expiries, now)
release(state, holds, expiries, ARGV[1])
redis.call('HINCRBY', state, 'spent', ARGV[2])
redis.call('PEXPIRE', state, ARGV[3])
return redis.call('HGET', state, 'spent')
