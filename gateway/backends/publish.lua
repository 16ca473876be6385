-- Append an event to a channel's stream, trim the stream to its retention and publish the event
-- live, in one atomic step.
-- KEYS[1] stream key; KEYS[2] (optional) job record key.
-- ARGV[1] pub/sub channel, ARGV[2] envelope tail (JSON after the id), ARGV[3] max length,
-- ARGV[4] stream TTL seconds, ARGV[5] byte budget, ARGV[6] job record TTL (0 = keep),
-- ARGV[7..] job field/value pairs.
-- JOB_TERMINAL_STATUSES and PUBLISH_COMMAND ('PUBLISH', or 'SPUBLISH' on a Redis Cluster) are
-- defined in front of this script when it is loaded (`load_script`).
-- Each entry stores the previous entry's id ("p"), so a reader can tell whether the history it
-- gets continues exactly from its position or whether something between was trimmed or lost.
-- Each entry also stores the running total of event bytes appended through itself ("c"): the
-- bytes a stream holds are the newest total minus the total before the oldest entry, so there
-- is no separate counter to keep in step with trimming and expiry.
local stream = KEYS[1]
local job = KEYS[2]
if job then
  local status = redis.call('HGET', job, 'status')
  if not status or JOB_TERMINAL_STATUSES[status] then
    return false
  end
end

local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- What an entry counts towards the byte budget: its event; entries stored before totals were
-- kept count nothing (count and TTL still trim them).
local function counted(entry)
  if field(entry, 'c') then return #field(entry, 'e') end
  return 0
end

local prev, total = '', 0
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if #last > 0 then
  prev = last[1][1]
  total = tonumber(field(last[1], 'c') or '0')
end
total = total + #ARGV[2]
local id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], '*',
  'e', ARGV[2], 'p', prev, 'c', string.format('%.0f', total))

-- Trim the oldest entries while the stream holds more than its byte budget; never the new one.
-- The stream never held more than the total ever appended: below the budget, nothing to read.
local budget = tonumber(ARGV[5])
local held = total
if total > budget then
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  local before = field(oldest, 'c')
  if before then held = total - tonumber(before) + #field(oldest, 'e') end
end
if held > budget then
  -- Usually one or two entries go: read a few, more only when a large event came in.
  local keep, cursor, count = nil, '-', 4
  while not keep do
    local batch = redis.call('XRANGE', stream, cursor, '+', 'COUNT', count)
    for _, entry in ipairs(batch) do
      if entry[1] == id or held <= budget then
        keep = entry[1]
        break
      end
      held = held - counted(entry)
    end
    cursor = '(' .. batch[#batch][1]
    count = math.min(count * 4, 256)
  end
  redis.call('XTRIM', stream, 'MINID', keep)
end

redis.call('EXPIRE', stream, ARGV[4])
redis.call(PUBLISH_COMMAND, ARGV[1], '{"specversion":"1.0","id":"' .. id .. '",' .. ARGV[2])
if job then
  redis.call('HSET', job, 'last_event_id', id, unpack(ARGV, 7))
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', job, ARGV[6]) end
end
return id
