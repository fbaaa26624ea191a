-- A session's state, with its expired holds given back first.
-- KEYS: state, holds, expiries of the session. Reply: the state hash as a flat list (empty: no such session).
local state, holds, expiries = KEYS[1], KEYS[2], KEYS[3]
purge(state, holds, expiries, server_ms())
return redis.call('HGETALL', state)
