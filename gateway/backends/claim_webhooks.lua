-- Claim due webhook deliveries: hide each for a lease (a crashed worker's claim comes back).
-- KEYS[1] schedule (sorted set: delivery id -> due ms), KEYS[2] payloads (hash).
-- ARGV[1] now (ms), ARGV[2] batch size, ARGV[3] lease end (ms).
-- Returns a flat list: id1, payload1, id2, payload2, ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local claimed = {}
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = payload
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return claimed
