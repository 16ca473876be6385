-- Claim members of a sorted set due by now, hiding each for a lease (a claimer that dies
-- leaves them to the next one once the lease ends).
-- KEYS[1] sorted set (member -> due ms); ARGV[1] now (ms), ARGV[2] batch size, ARGV[3] lease
-- end (ms). Returns the claimed members.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], member)
end
return due
