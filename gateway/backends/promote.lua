-- Move delayed jobs that are due onto the job stream, atomically (no job lost or doubled).
-- KEYS[1] delayed sorted set, KEYS[2] job stream; ARGV[1] now (ms), ARGV[2] batch size.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('XADD', KEYS[2], '*', 'job', job_id)
end
return #due
