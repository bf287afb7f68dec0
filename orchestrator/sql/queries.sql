-- Every SQL statement the orchestrator runs, by name. Loaded once by orchestrator.store.
-- Parameters are always bound (%(name)s), never formatted in. Each state change checks the
-- state it expects in its WHERE clause: no row back means another process got there first.

-- name: insert_job
-- Insert-or-get, step 1: a conflict on the key returns nothing (then job_by_key).
INSERT INTO jobs (kind, provider, idempotency_key, fingerprint, amount, currency, customer,
                  payment_method, parent_job_id, params, max_attempts, deadline_at,
                  changed_by, change_reason, dispatched_at)
VALUES (%(kind)s, %(provider)s, %(idempotency_key)s, %(fingerprint)s, %(amount)s,
        %(currency)s, %(customer)s, %(payment_method)s, %(parent_job_id)s, %(params)s,
        %(max_attempts)s, now() + make_interval(secs => %(horizon_s)s),
        %(changed_by)s, 'accepted', now())
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING *;

-- name: job_by_key
SELECT * FROM jobs WHERE idempotency_key = %(idempotency_key)s;

-- name: job_by_id
SELECT * FROM jobs WHERE id = %(id)s;

-- name: notify_dispatch
-- Inside a caller's transaction: NOTIFY is delivered at commit only, so the clock's listener
-- sends the message exactly when the job becomes visible (and never if the caller rolls back).
SELECT pg_notify('orchestrator_dispatch', %(id)s::text);

-- name: claim_job
-- Compare-and-set claim: only a due, unclaimed job with attempts left; the lease bounds how
-- long a dead worker can hold it.
--
-- For a provider that honours idempotency keys (%(keyed_providers)s) the claim commits
-- asynchronously, as settle_job does: if a crash of PostgreSQL loses it, the job is back as it
-- was, with the same key generation, so whatever the worker sent meanwhile is replayed by the
-- provider under the same key rather than executed again. A provider without keys (a send)
-- keeps the synchronous commit: there a lost claim could let the same send out twice.
-- (CASE, unlike OR, fixes the order: set_config runs only for a keyed provider.)
UPDATE jobs
SET state = 'running',
    attempts = attempts + 1,
    lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    last_attempt_at = now(),
    changed_by = %(owner)s::text,
    change_reason = 'claimed for attempt ' || (attempts + 1)
WHERE id = %(id)s
  AND state IN ('pending', 'retrying')
  AND next_attempt_at <= now()
  AND attempts < max_attempts
  AND CASE WHEN provider = ANY(%(keyed_providers)s::text[])
           THEN set_config('synchronous_commit', 'off', true) = 'off'
           ELSE true END
RETURNING *, now() AS db_now;

-- name: lease_for_lookup
-- An unknown or processing job is settled by asking the provider; the lease (without a state
-- change) keeps two resolvers from racing.
UPDATE jobs
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE id = %(id)s
  AND state IN ('unknown', 'processing')
  AND next_attempt_at <= now()
  AND (lease_expires_at IS NULL OR lease_expires_at < now())
RETURNING *, now() AS db_now;

-- name: settle_job
-- Move a job held under our lease out of `from_state`, recording the attempt (when one was
-- made) in the same statement. Data-modifying CTEs always run, so the attempt is recorded
-- even if the lease was lost meanwhile, which is what happened at the provider.
--
-- It commits asynchronously (synchronous_commit = off for this transaction only): the worker
-- does not wait for the WAL flush. Only a crash of PostgreSQL itself within a fraction of a
-- second can lose the commit, and then the job is back in `running` under an expired lease:
-- the clock makes it `unknown` and the lookup adopts what the provider holds. Nothing is
-- executed twice: Stripe replays the same key, and a send without keys goes `dead`
-- (ambiguous) rather than out again. The claim, which precedes the provider call, stays
-- synchronous: losing it could let a send without keys go out twice.
WITH async_commit AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true) AS setting
),
attempt AS (
    INSERT INTO job_attempts (job_id, attempt, key_generation, provider_key, worker, outcome,
                              error_class, error_code, http_status, provider_request_id,
                              provider_ref, duration_ms, started_at)
    SELECT %(id)s, %(attempt)s::integer, %(attempt_generation)s::integer, %(provider_key)s,
           %(owner)s, %(outcome)s::attempt_outcome, %(error_class)s, %(error_code)s,
           %(http_status)s::integer, %(provider_request_id)s, %(provider_ref)s,
           %(duration_ms)s::integer, %(started_at)s::timestamptz
    WHERE %(attempt)s::integer IS NOT NULL
    -- Only after a crash of PostgreSQL lost an asynchronous claim (claim_job) can an attempt
    -- number come twice: both were calls under the same key, and the first record stands.
    ON CONFLICT (job_id, attempt) DO NOTHING
)
UPDATE jobs
SET state = %(to_state)s,
    lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    dispatched_at = CASE WHEN %(dispatching)s THEN now() ELSE dispatched_at END,
    key_generation = key_generation + %(generation_step)s,
    -- refund_attempt (0 or 1): the breaker or rate limiter denied the call the claim
    -- counted, so the attempt it took is given back.
    attempts = CASE WHEN %(reset_attempts)s THEN 0
                    ELSE attempts - %(refund_attempt)s::integer END,
    provider_ref = COALESCE(%(provider_ref)s, provider_ref),
    provider_status = COALESCE(%(provider_status)s, provider_status),
    last_error_code = COALESCE(%(error_code)s, last_error_code),
    last_error = COALESCE(%(error)s, last_error),
    unknown_cause = %(unknown_cause)s,
    dead_reason = %(dead_reason)s,
    changed_by = %(owner)s::text,
    change_reason = %(reason)s
WHERE id = %(id)s
  AND state = %(from_state)s
  AND lease_owner IS NOT DISTINCT FROM %(lease_owner)s
  AND (SELECT setting FROM async_commit) = 'off'
RETURNING state, last_error_code;

-- name: release_lease
-- Give a leased unknown/processing job back, to be looked at again after `delay_s`.
UPDATE jobs
SET lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    dispatched_at = now()
WHERE id = %(id)s AND lease_owner = %(owner)s AND state IN ('unknown', 'processing')
RETURNING *;

-- name: expire_leases
-- A running job whose lease passed: its worker died or hung, maybe mid-call. The outcome is
-- unknown until the provider is asked.
UPDATE jobs
SET state = 'unknown',
    unknown_cause = 'lease_expired',
    lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now(),
    changed_by = %(owner)s::text,
    change_reason = 'lease expired (worker died or hung)'
WHERE id IN (
    SELECT id FROM jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: due_for_dispatch
-- Jobs due for longer than the grace with no message sent within it: their message was lost
-- (Redis emptied, a crash between commit and send). Marked as dispatched in the same statement.
UPDATE jobs
SET dispatched_at = now()
WHERE id IN (
    SELECT id FROM jobs
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
      AND next_attempt_at <= now() - make_interval(secs => %(grace_s)s)
      AND (dispatched_at IS NULL OR dispatched_at <= now() - make_interval(secs => %(grace_s)s))
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: job_attempts
SELECT * FROM job_attempts WHERE job_id = %(id)s ORDER BY attempt;

-- name: job_transitions
SELECT * FROM job_transitions WHERE job_id = %(id)s ORDER BY id;

-- name: list_jobs
SELECT * FROM jobs
WHERE (%(state)s::job_state IS NULL OR state = %(state)s::job_state)
  AND (%(kind)s::job_kind IS NULL OR kind = %(kind)s::job_kind)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
ORDER BY created_at DESC, id
LIMIT %(limit)s;

-- name: count_by_state
SELECT state::text AS state, count(*) AS n FROM jobs GROUP BY state ORDER BY state;

-- name: count_expired_leases
SELECT count(*) AS n FROM jobs WHERE state = 'running' AND lease_expires_at < now();

-- name: count_due_for_dispatch
SELECT count(*) AS n FROM jobs
WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
  AND next_attempt_at <= now() - make_interval(secs => %(grace_s)s)
  AND (dispatched_at IS NULL OR dispatched_at <= now() - make_interval(secs => %(grace_s)s))
  AND (lease_expires_at IS NULL OR lease_expires_at < now());

-- name: delete_old_attempts
-- Retention: attempt rows of finished jobs only (never job rows, never live jobs' history).
DELETE FROM job_attempts
WHERE id IN (
    SELECT a.id FROM job_attempts a JOIN jobs j ON j.id = a.job_id
    WHERE a.finished_at < now() - make_interval(days => %(days)s)
      AND j.state IN ('succeeded', 'failed', 'cancelled')
    LIMIT %(limit)s
);

-- name: delete_old_webhook_events
-- Retention: settled events only, long after providers stop redelivering (Stripe: 3 days), so
-- deduplication still holds for any delivery that can still arrive.
DELETE FROM webhook_events
WHERE id IN (
    SELECT id FROM webhook_events
    WHERE status <> 'received' AND received_at < now() - make_interval(days => %(days)s)
    LIMIT %(limit)s
);

-- name: count_old_webhook_events
SELECT count(*) AS n FROM webhook_events
WHERE status <> 'received' AND received_at < now() - make_interval(days => %(days)s);

-- name: count_old_attempts
SELECT count(*) AS n FROM job_attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.finished_at < now() - make_interval(days => %(days)s)
  AND j.state IN ('succeeded', 'failed', 'cancelled');

-- name: lock_charge_for_refund
-- orch.refund(), inside its transaction: lock the charge so concurrent refunds of it queue
-- here, and read what remains refundable.
SELECT * FROM jobs WHERE id = %(id)s FOR UPDATE;

-- name: reserve_refund
-- Reserve a refund's amount on its charge: only a succeeded charge, and only while the sum of
-- reservations stays within the charged amount (the CHECK jobs_refunds_within_amount backs it).
UPDATE jobs
SET refunded_amount = refunded_amount + %(amount)s
WHERE id = %(id)s
  AND kind = 'charge'
  AND state = 'succeeded'
  AND refunded_amount + %(amount)s <= amount
RETURNING *;

-- ---------------------------------------------------------------------------------------
-- Operator surface (orchestrator.operations, orchestrator.deadletters, orchestrator.ops_web).
-- Listings page by keyset on (created_at, id), newest first. The first page passes the
-- sentinel cursor ('infinity', the largest uuid), so the row comparison is always an index
-- condition, whatever the page.

-- name: ops_list_jobs
SELECT * FROM jobs
WHERE (created_at, id) < (%(cursor_created_at)s::timestamptz, %(cursor_id)s::uuid)
  AND created_at >= %(created_after)s::timestamptz
  AND created_at < %(created_before)s::timestamptz
  AND (%(state)s::job_state IS NULL OR state = %(state)s::job_state)
  AND (%(kind)s::job_kind IS NULL OR kind = %(kind)s::job_kind)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
  AND (%(error_code)s::text IS NULL OR last_error_code = %(error_code)s::text)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: ops_list_dead
-- The DLQ: served by the partial index jobs_dead_created_idx.
SELECT * FROM jobs
WHERE state = 'dead'
  AND (created_at, id) < (%(cursor_created_at)s::timestamptz, %(cursor_id)s::uuid)
  AND created_at >= %(created_after)s::timestamptz
  AND created_at < %(created_before)s::timestamptz
  AND (%(kind)s::job_kind IS NULL OR kind = %(kind)s::job_kind)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
  AND (%(error_code)s::text IS NULL OR last_error_code = %(error_code)s::text)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: ops_replay_job
-- dead -> pending with a fresh attempt budget and retry horizon; the application key is
-- untouched, the provider key generation moves on only by `generation_step` (decided from
-- the provider's answer, orchestrator.operations.plan_replay). The generation in the WHERE
-- makes the plan stale-proof. Audited in the same statement.
-- The budget is fresh, the count is not: attempt numbers stay unique per job
-- (job_attempts_unique), so the next attempt is attempts + 1 and max_attempts moves up.
WITH moved AS (
    UPDATE jobs
    SET state = 'pending',
        max_attempts = attempts + %(budget)s,
        key_generation = key_generation + %(generation_step)s,
        next_attempt_at = now(),
        deadline_at = now() + make_interval(secs => %(horizon_s)s),
        dispatched_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        unknown_cause = NULL,
        dead_reason = NULL,
        changed_by = %(actor)s,
        change_reason = %(reason)s
    WHERE id = %(id)s AND state = 'dead' AND key_generation = %(expected_generation)s
      AND attempts + %(budget)s <= 100  -- jobs.max_attempts CHECK
    RETURNING *
), audit AS (
    INSERT INTO operator_actions (actor, action, target, reason, details)
    SELECT %(actor)s, 'dlq.replay', id::text, %(reason)s, %(details)s FROM moved
)
SELECT * FROM moved;

-- name: ops_adopt_job
-- dead -> succeeded: the provider already holds a successful object for this job.
WITH moved AS (
    UPDATE jobs
    SET state = 'succeeded',
        provider_ref = %(provider_ref)s,
        provider_status = %(provider_status)s,
        dead_reason = NULL,
        changed_by = %(actor)s,
        change_reason = %(reason)s
    WHERE id = %(id)s AND state = 'dead'
    RETURNING *
), audit AS (
    INSERT INTO operator_actions (actor, action, target, reason, details)
    SELECT %(actor)s, 'dlq.adopt', id::text, %(reason)s, %(details)s FROM moved
)
SELECT * FROM moved;

-- name: ops_discard_job
WITH moved AS (
    UPDATE jobs
    SET state = 'cancelled', changed_by = %(actor)s, change_reason = %(reason)s
    WHERE id = %(id)s AND state = 'dead'
    RETURNING *
), audit AS (
    INSERT INTO operator_actions (actor, action, target, reason, details)
    SELECT %(actor)s, 'dlq.discard', id::text, %(reason)s, %(details)s FROM moved
)
SELECT * FROM moved;

-- name: ops_audit
INSERT INTO operator_actions (actor, action, target, reason, details)
VALUES (%(actor)s, %(action)s, %(target)s, %(reason)s, %(details)s)
RETURNING id;

-- name: db_now
SELECT now() AS db_now;

-- name: ops_actions_for_target
SELECT * FROM operator_actions WHERE target = %(target)s ORDER BY id;

-- name: ops_attempts_per_minute
SELECT date_trunc('minute', finished_at) AS minute, outcome::text AS outcome, count(*) AS n
FROM job_attempts
WHERE finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: metrics_attempt_outcomes
SELECT j.provider, a.outcome::text AS outcome, count(*) AS n
FROM job_attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1, 2;

-- name: metrics_attempt_latency
-- width_bucket over upper bounds + 1: bucket i holds durations <= bounds[i] (integers, ms).
SELECT j.provider, width_bucket(a.duration_ms, %(bounds_ms)s::integer[]) AS bucket,
       count(*) AS n, sum(a.duration_ms) AS total_ms
FROM job_attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1, 2;

-- name: broker_dead_letter_insert
INSERT INTO broker_dead_letters (message_id, queue, job_id, actor_name, dead_lettered_at,
                                 job_state, action, message)
VALUES (%(message_id)s, %(queue)s, %(job_id)s, %(actor_name)s, %(dead_lettered_at)s,
        %(job_state)s, %(action)s, %(message)s)
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id;

-- name: broker_dead_letters_recent
SELECT * FROM broker_dead_letters ORDER BY seen_at DESC, message_id LIMIT %(limit)s;

-- name: broker_dead_letters_by_action
SELECT action, count(*) AS n FROM broker_dead_letters GROUP BY action;

-- name: job_by_provider_ref
-- A provider event names the provider's object; a job made at most one successful one.
SELECT * FROM jobs
WHERE provider = %(provider)s AND provider_ref = %(provider_ref)s
ORDER BY created_at
LIMIT 1;

-- name: insert_webhook_event
-- Store a verified event once: a redelivery (same provider and event id) returns no row.
INSERT INTO webhook_events (provider, event_id, type, object_id, payload)
VALUES (%(provider)s, %(event_id)s, %(type)s, %(object_id)s, %(payload)s)
ON CONFLICT (provider, event_id) DO NOTHING
RETURNING id;

-- name: webhook_event_by_id
SELECT * FROM webhook_events WHERE id = %(id)s;

-- name: webhook_event_by_event_id
SELECT * FROM webhook_events WHERE provider = %(provider)s AND event_id = %(event_id)s;

-- name: claim_webhook_event
-- Compare-and-set claim of a received event; the lease keeps two processors from racing
-- and bounds how long a dead one holds it.
UPDATE webhook_events
SET attempts = attempts + 1,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE id = %(id)s
  AND status = 'received'
  AND (lease_expires_at IS NULL OR lease_expires_at < now())
RETURNING *;

-- name: finish_webhook_event
UPDATE webhook_events
SET status = %(status)s::webhook_status,
    job_id = %(job_id)s,
    note = %(note)s,
    last_error = NULL,
    lease_expires_at = NULL,
    processed_at = now()
WHERE id = %(id)s AND status = 'received'
RETURNING *;

-- name: release_webhook_event
-- Processing failed this time: record why and let the clock re-send it after the grace;
-- after max_attempts the event is parked as failed for an operator.
UPDATE webhook_events
SET last_error = %(error)s,
    lease_expires_at = NULL,
    dispatched_at = now(),
    status = CASE WHEN attempts >= %(max_attempts)s
                  THEN 'failed'::webhook_status ELSE status END,
    processed_at = CASE WHEN attempts >= %(max_attempts)s THEN now() END
WHERE id = %(id)s AND status = 'received'
RETURNING *;

-- name: stale_webhook_events
-- Received events with no processing message sent within the grace (lost message, crash
-- between commit and send): marked as dispatched in the same statement.
UPDATE webhook_events
SET dispatched_at = now()
WHERE id IN (
    SELECT id FROM webhook_events
    WHERE status = 'received'
      AND dispatched_at <= now() - make_interval(secs => %(grace_s)s)
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY dispatched_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: count_stale_webhook_events
SELECT count(*) AS n FROM webhook_events
WHERE status = 'received'
  AND dispatched_at <= now() - make_interval(secs => %(grace_s)s)
  AND (lease_expires_at IS NULL OR lease_expires_at < now());

-- name: list_webhook_events
-- Without the payload: listings are for scanning; `events show` reads one event whole.
SELECT id, provider, event_id, type, object_id, job_id, status::text AS status, attempts,
       note, last_error, received_at, processed_at
FROM webhook_events
WHERE (%(status)s::webhook_status IS NULL OR status = %(status)s::webhook_status)
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(job_id)s::uuid IS NULL OR job_id = %(job_id)s::uuid)
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s;

-- name: settle_job_from_webhook
-- A verified provider event moves a job forward, never back: only out of the states the
-- caller names (see orchestrator.webhooks), and only onto the object the job already refers
-- to (or none yet). The lease is cleared: a worker still mid-call then finds that its own
-- settle (state = 'running' AND its lease) matches no row, and records nothing more.
UPDATE jobs
SET state = %(to_state)s::job_state,
    provider_ref = %(provider_ref)s,
    provider_status = %(provider_status)s,
    last_error_code = COALESCE(%(error_code)s, last_error_code),
    lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    dispatched_at = now(),
    changed_by = %(changed_by)s,
    change_reason = %(reason)s
WHERE id = %(id)s
  AND state = ANY(%(from_states)s::job_state[])
  AND (provider_ref IS NULL OR provider_ref = %(provider_ref)s)
RETURNING *;

-- name: ops_count_dead
SELECT count(*) AS n FROM jobs
WHERE state = 'dead'
  AND created_at >= %(created_after)s::timestamptz
  AND created_at < %(created_before)s::timestamptz
  AND (%(kind)s::job_kind IS NULL OR kind = %(kind)s::job_kind)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
  AND (%(error_code)s::text IS NULL OR last_error_code = %(error_code)s::text);

-- name: demo_states
-- `orchestrator demo`: its own jobs by kind and state (a dev stack may hold other jobs).
SELECT kind::text AS kind, state::text AS state, count(*) AS n
FROM jobs WHERE id = ANY(%(ids)s::uuid[])
GROUP BY kind, state;

-- name: demo_jobs
-- `orchestrator demo`: its jobs, with the seconds from acceptance to the final state (NULL
-- while a job is not final).
SELECT id::text AS id, kind::text AS kind, state::text AS state, amount, provider_ref,
       CASE WHEN state IN ('succeeded', 'failed', 'dead', 'cancelled')
            THEN extract(epoch FROM updated_at - created_at)::float8 END AS settle_s
FROM jobs
WHERE id = ANY(%(ids)s::uuid[]);
