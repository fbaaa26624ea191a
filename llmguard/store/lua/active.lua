-- Count the sessions active within a time span, and name the entries too old for their session to be alive (the
-- caller checks which sessions are gone, and takes those out of both indexes with index_trim).
-- KEYS: the activity index (member: session key, score: last activity ms). ARGV: within_ms, keep_ms, limit.
-- Reply: {count, cutoff_ms, up to limit members (oldest first) last active before cutoff_ms}
local index = KEYS[1]
local now = server_ms()
local cutoff = int(now - tonumber(ARGV[2]))
local old = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[3])
return {redis.call('ZCOUNT', index, int(now - tonumber(ARGV[1])), '+inf'), cutoff, old}
