-- breaker_record.lua: one finished provider call moves the breaker, atomically.
--
-- KEYS[1]  breaker hash   <ns>:breaker:<provider>
--            state, consecutive, trips, opened_at_ms, next_probe_ms, cooldown_ms,
--            probe_token, probe_until_ms, failed_probes, trip_reason
-- KEYS[2]  call window    <ns>:breaker:<provider>:calls (list of "<ms>:<1 failed|0 ok>")
-- KEYS[3]  bucket hash    <ns>:ratelimit:<provider> (blocked_until_ms, on a 429)
-- ARGV[1]  now in ms, or "" to use Redis TIME
-- ARGV[2]  signal: success | failure | neutral | rate_limited
-- ARGV[3]  the token the call was permitted with ("" if none)
-- ARGV[4]  consecutive failures that trip a closed breaker
-- ARGV[5]  window size in calls
-- ARGV[6]  window length in ms (older calls do not count)
-- ARGV[7]  minimum calls in the window before the failure rate can trip it
-- ARGV[8]  failure rate (0..1) that trips it
-- ARGV[9]  first cooldown in ms
-- ARGV[10] longest cooldown in ms (each failed probe doubles it up to this)
-- ARGV[11] Retry-After in ms for rate_limited (0: none)
--
-- Returns {state, changed (0|1), why ("" when unchanged)}. Only the probe holder moves a half-open breaker; calls
-- that were in flight when it tripped report into an open breaker and change nothing.

-- `now` (ms) is set from ARGV[1] by now.lua, which is loaded in front of this script.
local signal = ARGV[2]

if signal == 'rate_limited' then
    local retry_after = tonumber(ARGV[11])
    if retry_after > 0 then
        local until_ms = now + retry_after
        local current = tonumber(redis.call('HGET', KEYS[3], 'blocked_until_ms')) or 0
        if until_ms > current then
            redis.call('HSET', KEYS[3], 'blocked_until_ms', until_ms)
            redis.call('PEXPIRE', KEYS[3], retry_after + 60000)
        end
    end
    signal = 'neutral'  -- a 429 says the provider is up: not a breaker failure
end

local s = redis.call('HMGET', KEYS[1], 'state', 'probe_token', 'cooldown_ms', 'override')
local state = s[1] or 'closed'
local cooldown_base = tonumber(ARGV[9])

if state == 'half_open' then
    if ARGV[3] == '' or ARGV[3] ~= s[2] then
        return {state, 0}
    end
    if signal == 'success' then
        redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive', 0,
                   'cooldown_ms', cooldown_base, 'closed_at_ms', now)
        redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until_ms', 'failed_probes')
        redis.call('DEL', KEYS[2])
        return {'closed', 1, 'probe succeeded'}
    elseif signal == 'failure' then
        local cooldown = math.min((tonumber(s[3]) or cooldown_base) * 2, tonumber(ARGV[10]))
        redis.call('HSET', KEYS[1], 'state', 'open', 'next_probe_ms', now + cooldown,
                   'cooldown_ms', cooldown)
        redis.call('HINCRBY', KEYS[1], 'failed_probes', 1)
        redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until_ms')
        return {'open', 1, 'probe failed'}
    end
    -- neutral (409, 429): the provider answered but proved nothing; free the lease at once.
    redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until_ms')
    return {state, 0}
end
if state ~= 'closed' or signal == 'neutral' then
    return {state, 0}
end

local window = tonumber(ARGV[5])
local window_ms = tonumber(ARGV[6])
local failed = (signal == 'failure') and 1 or 0
redis.call('LPUSH', KEYS[2], now .. ':' .. failed)
redis.call('LTRIM', KEYS[2], 0, window - 1)
redis.call('PEXPIRE', KEYS[2], window_ms)
if failed == 0 then
    redis.call('HSET', KEYS[1], 'consecutive', 0)
    return {state, 0}
end

local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
local reason = nil
if consecutive >= tonumber(ARGV[4]) then
    reason = consecutive .. ' consecutive failures'
else
    local total, failures = 0, 0
    for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
        local sep = string.find(entry, ':', 1, true)
        if tonumber(string.sub(entry, 1, sep - 1)) >= now - window_ms then
            total = total + 1
            failures = failures + tonumber(string.sub(entry, sep + 1))
        end
    end
    if total >= tonumber(ARGV[7]) and failures >= tonumber(ARGV[8]) * total then
        reason = failures .. ' of the last ' .. total .. ' calls failed'
    end
end
if not reason then
    return {state, 0}
end
redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at_ms', now,
           'next_probe_ms', now + cooldown_base, 'cooldown_ms', cooldown_base,
           'trip_reason', reason, 'failed_probes', 0)
redis.call('HINCRBY', KEYS[1], 'trips', 1)
redis.call('DEL', KEYS[2])
return {'open', 1, reason}
