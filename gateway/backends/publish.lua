-- Append an event to a channel's stream and publish it live, in one atomic step.
-- KEYS[1] stream key; KEYS[2] (optional) job record key.
-- ARGV[1] pub/sub channel, ARGV[2] envelope tail (JSON after the id), ARGV[3] max length,
-- ARGV[4] stream TTL seconds, ARGV[5] job record TTL (0 = keep), ARGV[6..] job field/value pairs.
-- Each entry stores the previous entry's id ("p"), so a reader can tell whether the history it
-- gets continues exactly from its position or whether something between was trimmed or lost.
local stream = KEYS[1]
local job = KEYS[2]
if job then
  local status = redis.call('HGET', job, 'status')
  if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
    return false
  end
end
local prev = ''
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if #last > 0 then prev = last[1][1] end
local id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[2], 'p', prev)
redis.call('EXPIRE', stream, ARGV[4])
redis.call('PUBLISH', ARGV[1], '{"specversion":"1.0","id":"' .. id .. '",' .. ARGV[2])
if job then
  redis.call('HSET', job, 'last_event_id', id, unpack(ARGV, 6))
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', job, ARGV[5]) end
end
return id
