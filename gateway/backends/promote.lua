-- Move delayed jobs that are due onto the job stream, atomically (no job lost or doubled).
-- KEYS[1] delayed sorted set, KEYS[2] job stream; ARGV[1] now (ms), ARGV[2] batch size.
-- Returns milliseconds until the next delayed job is due, or -1 when none is waiting.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('XADD', KEYS[2], '*', 'job', job_id)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next_due == 0 then return -1 end
return math.max(0, tonumber(next_due[2]) - tonumber(ARGV[1]))
