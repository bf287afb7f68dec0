-- Provider webhook events: stored once, claimed, finished or released, swept, listed, and the
-- job moves they cause (orchestrator.db.store.Store).
-- Parameters are always bound (%(name)s), never formatted in. Each state change checks the
-- state it expects in its WHERE clause: no row back means another process got there first.
-- A statement that names its event (or job) by id compares the status (state) as text, so
-- that only the primary key can find the row, never a scan of webhook_events_received_idx
-- (or of a partial index of jobs) walking every entry in it (queries/jobs.sql says more).

-- name: insert_webhook_event
-- Store a verified event once: a redelivery (same provider and event id) returns no row.
INSERT INTO webhook_events (provider, event_id, type, object_id, payload, subject_job_id,
                            reports_success)
VALUES (%(provider)s, %(event_id)s, %(type)s, %(object_id)s, %(payload)s, %(subject_job_id)s,
        %(reports_success)s)
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
  AND status::text = 'received'
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
WHERE id = %(id)s AND status::text = 'received'
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
WHERE id = %(id)s AND status::text = 'received'
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

-- name: job_by_provider_ref
-- A provider event names the provider's object; a job made at most one successful one.
SELECT * FROM jobs
WHERE provider = %(provider)s AND provider_ref = %(provider_ref)s
ORDER BY created_at
LIMIT 1;

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
    -- As settle_job: a poll the broker carries is dispatched for its due time; a later one is
    -- left to the clock's due dispatch (jobs_scheduled_idx).
    dispatched_at = CASE WHEN %(broker_carries)s::boolean
                         THEN now() + make_interval(secs => %(delay_s)s)
                         ELSE LEAST(dispatched_at, now()) END,
    changed_by = %(changed_by)s,
    change_reason = %(reason)s
WHERE id = %(id)s
  AND state::text = ANY(%(from_states)s::job_state[]::text[])
  AND (provider_ref IS NULL OR provider_ref = %(provider_ref)s)
RETURNING *;

-- name: broker_dead_letter_insert
INSERT INTO broker_dead_letters (message_id, queue, job_id, actor_name, dead_lettered_at,
                                 job_state, action, message)
VALUES (%(message_id)s, %(queue)s, %(job_id)s, %(actor_name)s, %(dead_lettered_at)s,
        %(job_state)s, %(action)s, %(message)s)
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id;
