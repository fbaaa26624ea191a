-- Count the sessions active within a time span, trimming entries too old to be alive.
-- KEYS: the activity index (member: session key, score: last activity ms). ARGV: within_ms, keep_ms.
local index = KEYS[1]
local now = server_ms()
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. int(now - tonumber(ARGV[2])))
return redis.call('ZCOUNT', index, int(now - tonumber(ARGV[1])), '+inf')
