-- A bridged message's event, published at most once: the publish script (publish.lua, defined
-- in front of this text as the function `publish` when it is loaded, see `BRIDGE_PUBLISH_LUA`)
-- runs only when the message's dedup key is absent, and the key is set in the same atomic step,
-- so a redelivered message is dropped whether the bridge died before or after its publish.
-- KEYS[1] stream key; KEYS[2] dedup key (in the channel's hash slot).
-- ARGV[1..5] as publish.lua's; ARGV[6] dedup key TTL seconds.
-- Returns {event id, 0} for a new event, {the first event's id, 1} for a duplicate.
local seen = redis.call('GET', KEYS[2])
if seen then
  return {seen, 1}
end
local id = publish({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
redis.call('SET', KEYS[2], id, 'EX', ARGV[6])
return {id, 0}
