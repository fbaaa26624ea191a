-- Forget a session and return its last state. Its holds and settled markers stay until they expire, so calls
-- still in flight settle exactly once and give back what they held in the windows.
-- KEYS: state, holds, expiries, hist of the session. Reply: the state hash as a flat list (empty: no such session).
local state, holds, expiries, hist = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
purge(state, holds, expiries, server_ms())
local last = redis.call('HGETALL', state)
redis.call('DEL', state, hist)
return last
