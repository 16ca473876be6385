-- Start a job: count its attempt against the limit and publish `job.started`, in one atomic
-- step (begin_attempt.lua and publish.lua together; publish.lua is defined in front of this
-- text as the function `publish` when it is loaded, see `START_JOB_LUA`).
-- KEYS[1] the job channel's stream, KEYS[2] the job record (one hash tag, one slot).
-- ARGV[1] max attempts, ARGV[2] the attempt number the event was built for (the record's
-- count + 1 when the worker read it), ARGV[3..] publish.lua's ARGV.
-- Returns false when the job is missing or has ended; {0, n} when n attempts already used the
-- allowance; {2, n} when the count is not ARGV[2] - 1 (changed since it was read: nothing done);
-- {1, n, event id} when attempt n was counted and its event published.
local status = redis.call('HGET', KEYS[2], 'status')
if not status or JOB_TERMINAL_STATUSES[status] then
  return false
end
local done = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
if done >= tonumber(ARGV[1]) then
  return {0, done}
end
if done + 1 ~= tonumber(ARGV[2]) then
  return {2, done}
end
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local id = publish(KEYS, {unpack(ARGV, 3)})
return {1, done + 1, id}
