-- An opted-in job's channel was occupied (ARGV[2] = 1: not due) or vacated (0: due after its
-- grace). KEYS[1] graces (hash: job id -> seconds), KEYS[2] due (sorted set: job id -> ms).
-- ARGV[1] job id, ARGV[2] watched, ARGV[3] now (ms).
local grace = redis.call('HGET', KEYS[1], ARGV[1])
if not grace then return 0 end
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + math.floor(tonumber(grace) * 1000), ARGV[1])
end
return 1
