-- Count one more run of a job unless that would pass its limit, in one atomic step.
-- KEYS[1] job record; ARGV[1] max attempts.
-- Returns {1, n} when attempt n may run; {0, n} when n attempts already used the allowance
-- (the count stays n); false when the job is missing or has ended (nothing may run).
-- JOB_TERMINAL_STATUSES is defined in front of this script when it is loaded (`load_script`).
local status = redis.call('HGET', KEYS[1], 'status')
if not status or JOB_TERMINAL_STATUSES[status] then
  return false
end
local done = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if done >= tonumber(ARGV[1]) then
  return {0, done}
end
return {1, redis.call('HINCRBY', KEYS[1], 'attempts', 1)}
