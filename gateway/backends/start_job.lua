-- Start a job: count its attempt against the limit and publish `job.started`, in one atomic
-- step (begin_attempt.lua and publish.lua together; publish.lua is defined in front of this
-- text as the function `publish` when it is loaded, see `START_JOB_LUA`).
-- KEYS[1] the job channel's stream, KEYS[2] the job record (one hash tag, one slot).
-- ARGV[1] the attempt number the caller read (the record's count + 1), or 0: read the record
-- here and start it with the count found (the worker's batches: no read of their own).
-- ARGV[2] n, then n pairs (job type, max attempts) from ARGV[3]: the types the caller may
-- start and their limits; type '' stands for any type. With ARGV[1] = 0, a job of a type not
-- listed, or with a webhook (`callback_url`), is read and not started.
-- ARGV[3 + 2n..] publish.lua's ARGV, whose event tail (ARGV[2] there) ends just before the
-- attempt number: the script appends the number and the closing '}}' (`job.started`'s data
-- is {"job_id": ..., "attempt": n}, the last member of the envelope).
-- Returns false when the job is missing or has ended; else {code, n, event id or '', record}
-- where record is the job's fields as HGETALL gave them before the start (only when ARGV[1]
-- is 0, else empty) and code is 1 when attempt n was counted and its event published, 0 when
-- n attempts already used the allowance, 2 when the count is not ARGV[1] - 1 (changed since it
-- was read: nothing done), 3 when the job was read and not started (see ARGV[2]).
local record = {}
local status, done, job_type, webhook
local expected = tonumber(ARGV[1])
if expected == 0 then
  record = redis.call('HGETALL', KEYS[2])
  for i = 1, #record, 2 do
    local name = record[i]
    if name == 'status' then status = record[i + 1]
    elseif name == 'attempts' then done = tonumber(record[i + 1])
    elseif name == 'type' then job_type = record[i + 1]
    elseif name == 'callback_url' then webhook = record[i + 1] ~= ''
    end
  end
else
  status = redis.call('HGET', KEYS[2], 'status')
  done = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
end
if not status or JOB_TERMINAL_STATUSES[status] then
  return false
end
done = done or 0
local limit
for i = 3, 2 + 2 * tonumber(ARGV[2]), 2 do
  if ARGV[i] == '' or ARGV[i] == job_type then
    limit = tonumber(ARGV[i + 1])
    break
  end
end
if not limit or (expected == 0 and webhook) then
  return {3, done, '', record}
end
if done >= limit then
  return {0, done, '', record}
end
if expected ~= 0 and done + 1 ~= expected then
  return {2, done, '', record}
end
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local args = {unpack(ARGV, 3 + 2 * tonumber(ARGV[2]))}
args[2] = args[2] .. string.format('%d', done + 1) .. '}}'
local id = publish(KEYS, args)
return {1, done + 1, id, record}
