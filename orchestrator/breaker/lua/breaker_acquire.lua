-- breaker_acquire.lua: may this process call the provider now? One atomic decision.
--
-- KEYS[1]  breaker hash   <ns>:breaker:<provider>
--            state (closed|open|half_open), next_probe_ms, probe_token, probe_until_ms,
--            override ("open" while an operator holds it open)
-- KEYS[2]  bucket hash    <ns>:ratelimit:<provider>
--            tokens, ts_ms (last refill), blocked_until_ms (a 429's Retry-After)
-- ARGV[1]  now in ms, or "" to use Redis TIME (shared by every host; never a host clock)
-- ARGV[2]  token naming the caller, kept as probe_token when it is granted the probe
-- ARGV[3]  probe lease in ms: a probe not reported within it is presumed dead
-- ARGV[4]  rate limit in calls per second (0: unlimited)
-- ARGV[5]  bucket capacity (burst) in calls
-- ARGV[6]  longest wait in ms told to a caller denied while a probe is in flight
-- ARGV[7]  wait in ms told to a caller denied while an operator holds the breaker open
--
-- Returns {verdict, wait_ms, state}; verdict is one of
--   allow         closed: call
--   probe         the one half-open probe: call, then report with this token
--   open          denied until the next probe time (wait_ms)
--   half_open     denied: another caller holds the probe lease
--   forced_open   denied: an operator opened the breaker
--   rate_limited  denied by the token bucket or a 429's Retry-After (wait_ms)
-- A denial changes nothing, so the caller's attempt is not consumed.

-- `now` (ms) is set from ARGV[1] by now.lua, which is loaded in front of this script.

local b = redis.call('HMGET', KEYS[1], 'state', 'next_probe_ms', 'probe_until_ms', 'override')
local state = b[1] or 'closed'
if b[4] == 'open' then
    return {'forced_open', tonumber(ARGV[7]), 'open'}
end

local verdict = 'allow'
if state == 'open' then
    local next_probe = tonumber(b[2]) or 0
    if now < next_probe then
        return {'open', next_probe - now, state}
    end
    verdict = 'probe'
elseif state == 'half_open' then
    local probe_until = tonumber(b[3]) or 0
    if now < probe_until then
        return {'half_open', math.min(probe_until - now, tonumber(ARGV[6])), state}
    end
    verdict = 'probe'  -- the last probe's holder died or never reported: take over
end

local r = redis.call('HMGET', KEYS[2], 'tokens', 'ts_ms', 'blocked_until_ms')
local blocked_until = tonumber(r[3]) or 0
if now < blocked_until then
    return {'rate_limited', blocked_until - now, state}
end
local rate = tonumber(ARGV[4])
if rate > 0 then
    local capacity = tonumber(ARGV[5])
    local tokens = tonumber(r[1]) or capacity
    local last = tonumber(r[2]) or now
    tokens = math.min(capacity, tokens + math.max(0, now - last) * rate / 1000)
    if tokens < 1 then
        redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts_ms', now)
        return {'rate_limited', math.ceil((1 - tokens) * 1000 / rate), state}
    end
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'ts_ms', now)
    -- An idle bucket is full again after capacity / rate seconds: let it expire.
    redis.call('PEXPIRE', KEYS[2], math.ceil(capacity * 1000 / rate) + 1000)
end

if verdict == 'probe' then
    redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_token', ARGV[2],
               'probe_until_ms', now + tonumber(ARGV[3]), 'half_open_at_ms', now)
    return {'probe', 0, 'half_open'}
end
return {'allow', 0, state}
