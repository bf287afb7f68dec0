-- breaker_override.lua: an operator opens or closes a breaker by hand, recorded with
-- who, why and when (the audit row in PostgreSQL is written by the caller).
--
-- KEYS[1]  breaker hash   <ns>:breaker:<provider>
-- KEYS[2]  call window    <ns>:breaker:<provider>:calls
-- ARGV[1]  now in ms, or "" to use Redis TIME
-- ARGV[2]  action: open | close | seed_open
--            open       held open (no probes) until an operator closes it
--            close      closed, counters and cooldown reset, any hold released
--            seed_open  rebuild after Redis lost its data: open with a probe due at
--                       ARGV[5], only if Redis holds no state for this breaker
-- ARGV[3]  actor (who)
-- ARGV[4]  reason (why)
-- ARGV[5]  cooldown in ms (open, close: shown as the next probe; seed_open: the delay)
--
-- Returns {state, changed (0|1)}.

-- `now` (ms) is set from ARGV[1] by now.lua, which is loaded in front of this script.
local action = ARGV[2]
local cooldown = tonumber(ARGV[5])

if action == 'seed_open' then
    if redis.call('EXISTS', KEYS[1]) == 1 then
        return {redis.call('HGET', KEYS[1], 'state') or 'closed', 0}
    end
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at_ms', now,
               'next_probe_ms', now + cooldown, 'cooldown_ms', cooldown,
               'trip_reason', ARGV[4], 'trips', 1)
    return {'open', 1}
end

redis.call('HSET', KEYS[1], 'override_action', action, 'override_by', ARGV[3],
           'override_reason', ARGV[4], 'override_at_ms', now)
redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until_ms')
if action == 'open' then
    redis.call('HSET', KEYS[1], 'state', 'open', 'override', 'open', 'opened_at_ms', now,
               'next_probe_ms', now + cooldown, 'trip_reason', 'opened by ' .. ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'trips', 1)
    return {'open', 1}
end
redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive', 0, 'cooldown_ms', cooldown,
           'closed_at_ms', now, 'failed_probes', 0)
redis.call('HDEL', KEYS[1], 'override')
redis.call('DEL', KEYS[2])
return {'closed', 1}
