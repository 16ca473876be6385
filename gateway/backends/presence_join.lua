-- Add or take over a presence entry, atomically with the channel's counts.
-- KEYS[1] entries (hash: key -> "<gateway>\n<entry JSON>"), KEYS[2] index (sorted set of keys,
-- all scored 0, for paging in key order), KEYS[3] users (hash: token subject -> entries).
-- ARGV[1] key ("<user>\31<client>"), ARGV[2] gateway id, ARGV[3] entry JSON.
-- Returns {1 when the entry is new, clients after}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. ARGV[3])
if old then
  return {0, redis.call('HLEN', KEYS[1])}
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
local user = string.sub(ARGV[1], 1, string.find(ARGV[1], '\31', 1, true) - 1)
if user ~= '' then
  redis.call('HINCRBY', KEYS[3], user, 1)
end
return {1, redis.call('HLEN', KEYS[1])}
