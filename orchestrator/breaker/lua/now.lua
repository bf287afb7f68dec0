-- now.lua: loaded in front of every breaker script (RedisBreaker). Sets `now` in ms:
-- ARGV[1] when given (tests inject a clock), else Redis TIME (shared by every host).
local now = tonumber(ARGV[1])
if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
