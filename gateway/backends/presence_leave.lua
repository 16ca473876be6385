-- Remove a presence entry if the given gateway still holds it, atomically with the counts.
-- KEYS as presence_join.lua; ARGV[1] key, ARGV[2] gateway id.
-- Returns {1 when removed by this call, clients after, the entry JSON when removed}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return {0, redis.call('HLEN', KEYS[1])}
end
local sep = string.find(old, '\n', 1, true)
if string.sub(old, 1, sep - 1) ~= ARGV[2] then
  return {0, redis.call('HLEN', KEYS[1])}
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local user = string.sub(ARGV[1], 1, string.find(ARGV[1], '\31', 1, true) - 1)
if user ~= '' then
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
  end
end
return {1, redis.call('HLEN', KEYS[1]), string.sub(old, sep + 1)}
