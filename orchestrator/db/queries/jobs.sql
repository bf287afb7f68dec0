-- Jobs: enqueue, claim, settle, lease expiry, dispatch sweep, refunds' reservation, reads and
-- retention (orchestrator.db.store.Store).
-- Parameters are always bound (%(name)s), never formatted in. Each state change checks the
-- state it expects in its WHERE clause: no row back means another process got there first.
-- A statement that names its job by id compares the state as text, so that only the primary
-- key can find the row. Compared as the enum, the state lets the planner read a partial index
-- (jobs_due_idx, jobs_running_lease_idx) or a range of jobs_state_created_idx instead, which
-- looks small beside finished history, and walk every entry in it for each statement: every
-- due job, and every dead entry left by the jobs moved since the last vacuum
-- (tests/integration/test_plans.py).

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
--
-- A job past its deadline is refused in the same statement: it goes `dead` (retry_horizon)
-- instead of `running`, so no provider key is ever sent after the retry horizon, however long
-- the workers were down or backlogged (Stripe forgets keys 24 h after their first use, and the
-- horizon is at most 20 h from enqueue).
UPDATE jobs
SET state = CASE WHEN deadline_at <= now() THEN 'dead'::job_state
                 ELSE 'running'::job_state END,
    attempts = CASE WHEN deadline_at <= now() THEN attempts ELSE attempts + 1 END,
    lease_owner = CASE WHEN deadline_at <= now() THEN NULL ELSE %(owner)s END,
    lease_expires_at = CASE WHEN deadline_at <= now() THEN NULL
                            ELSE now() + make_interval(secs => %(lease_s)s) END,
    last_attempt_at = CASE WHEN deadline_at <= now() THEN last_attempt_at ELSE now() END,
    dead_reason = CASE WHEN deadline_at <= now() THEN 'retry_horizon' ELSE dead_reason END,
    changed_by = %(owner)s::text,
    change_reason = CASE WHEN deadline_at <= now()
                         THEN 'claim refused: past the retry horizon, no key is sent after it'
                         ELSE 'claimed for attempt ' || (attempts + 1) END
WHERE id = %(id)s
  AND state::text IN ('pending', 'retrying')
  AND next_attempt_at <= now()
  AND attempts < max_attempts
  AND CASE WHEN provider = ANY(%(keyed_providers)s::text[])
           THEN set_config('synchronous_commit', 'off', true) = 'off'
           ELSE true END
RETURNING *, now() AS db_now,
    -- A verified success event for this job stored but not processed yet (a webhook came
    -- before the worker): the executor has it processed instead of calling out again.
    (SELECT e.id FROM webhook_events e
     WHERE e.subject_job_id = jobs.id AND e.status = 'received' AND e.reports_success
     ORDER BY e.id LIMIT 1) AS unprocessed_success_event;

-- name: lease_for_lookup
-- An unknown or processing job is settled by asking the provider; the lease (without a state
-- change) keeps two resolvers from racing.
UPDATE jobs
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE id = %(id)s
  AND state::text IN ('unknown', 'processing')
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
                              provider_ref, duration_ms, started_at, provider)
    SELECT %(id)s, %(attempt)s::integer, %(attempt_generation)s::integer, %(provider_key)s,
           %(owner)s, %(outcome)s::attempt_outcome, %(error_class)s, %(error_code)s,
           %(http_status)s::integer, %(provider_request_id)s, %(provider_ref)s,
           %(duration_ms)s::integer, %(started_at)s::timestamptz, %(attempt_provider)s
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
    -- PostgreSQL owns the schedule (schema.sql, dispatched_at): a job the broker carries (due
    -- within its delay window: broker_carries) is marked dispatched for its due time; one
    -- due later is left dispatched before it, so it enters jobs_scheduled_idx and the clock
    -- dispatches it when due (dispatch_due).
    dispatched_at = CASE WHEN NOT %(dispatching)s::boolean THEN dispatched_at
                         WHEN %(broker_carries)s::boolean
                             THEN now() + make_interval(secs => %(delay_s)s)
                         ELSE LEAST(dispatched_at, now()) END,
    key_generation = key_generation + %(generation_step)s,
    -- refund_attempt (0 or 1): the breaker or rate limiter denied the call the claim
    -- counted, so the attempt it took is given back.
    attempts = CASE WHEN %(reset_attempts)s THEN 0
                    ELSE attempts - %(refund_attempt)s::integer END,
    provider_ref = COALESCE(%(provider_ref)s, provider_ref),
    provider_status = COALESCE(%(provider_status)s, provider_status),
    provider_details = %(provider_details)s,
    last_error_code = COALESCE(%(error_code)s, last_error_code),
    last_error = COALESCE(%(error)s, last_error),
    unknown_cause = %(unknown_cause)s,
    dead_reason = %(dead_reason)s,
    -- A charge failing over to its second provider (orchestrator.providers.failover) takes
    -- that provider's tokens; its customer is that provider's too (NULL when none is given).
    provider = COALESCE(%(switch_provider)s, provider),
    customer = CASE WHEN %(switch_provider)s::text IS NULL THEN customer
                    ELSE %(switch_customer)s END,
    payment_method = COALESCE(%(switch_payment_method)s, payment_method),
    changed_by = %(owner)s::text,
    change_reason = %(reason)s
WHERE id = %(id)s
  AND state::text = %(from_state)s::job_state::text
  AND lease_owner IS NOT DISTINCT FROM %(lease_owner)s
  AND (SELECT setting FROM async_commit) = 'off'
RETURNING state, last_error_code;

-- name: release_lease
-- Give a leased unknown/processing job back, to be looked at again after `delay_s`: by the
-- broker's delayed message when it carries one (broker_carries), else by the clock's due
-- dispatch (as in settle_job).
UPDATE jobs
SET lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    dispatched_at = CASE WHEN %(broker_carries)s::boolean
                         THEN now() + make_interval(secs => %(delay_s)s)
                         ELSE LEAST(dispatched_at, now()) END
WHERE id = %(id)s AND lease_owner = %(owner)s AND state::text IN ('unknown', 'processing')
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
    -- The clock sends each one its message right after (ExpireLeases).
    dispatched_at = now(),
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
-- (Jobs scheduled in PostgreSQL are dispatched when due by dispatch_due; this is the net under
-- every message, whoever sent it.)
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
-- reservations stays within the charged amount, or for an authorization within the captured
-- amount (the CHECKs jobs_refunds_within_amount and jobs_capture_within_amount back it).
UPDATE jobs
SET refunded_amount = refunded_amount + %(amount)s
WHERE id = %(id)s
  AND kind = 'charge'
  AND state::text = 'succeeded'
  AND refunded_amount + %(amount)s <= COALESCE(captured_amount, amount)
RETURNING *;

-- name: take_settlements
-- The oldest settles of the outbox, taken (deleted) and counted into job_settled_totals in
-- one statement; the caller delivers them before it commits (at least once).
WITH taken AS (
    DELETE FROM job_settlements
    WHERE id IN (SELECT id FROM job_settlements ORDER BY id
                 LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING id, job_id, kind, provider, state, settled_at
), counted AS (
    INSERT INTO job_settled_totals (kind, provider, state, n)
    SELECT kind, provider, state, count(*) FROM taken GROUP BY 1, 2, 3
    ON CONFLICT (kind, provider, state) DO UPDATE SET n = job_settled_totals.n + EXCLUDED.n
)
SELECT job_id::text AS job_id, state::text AS state FROM taken ORDER BY id;

-- name: count_settlements
SELECT count(*) AS n FROM job_settlements;

-- name: job_state
SELECT state::text AS state FROM jobs WHERE id = %(id)s;

-- name: add_waiter
-- Orchestrator.wait, once its connection LISTENs: the job's state, and a job_waiters row when
-- it has not settled, so that its settle sends NOTIFY orchestrator_settled. FOR SHARE closes
-- the race with a settle: one already updating the row is waited for (its state is read
-- here), and one coming later waits for this commit, after which its trigger sees the row.
WITH job AS (
    SELECT state FROM jobs WHERE id = %(id)s FOR SHARE
), registered AS (
    INSERT INTO job_waiters (job_id, waiter)
    SELECT %(id)s, %(waiter)s FROM job
    WHERE state NOT IN ('succeeded', 'failed', 'dead', 'cancelled')
    ON CONFLICT DO NOTHING
)
SELECT state::text AS state FROM job;

-- name: remove_waiter
-- A wait that ends without the settle (timeout, error): its row goes (a settle deletes them).
DELETE FROM job_waiters WHERE job_id = %(id)s AND waiter = %(waiter)s;

-- name: insert_jobs_bulk
-- charge_many (orchestrator.app.bulk): insert a whole batch in one statement. The batch comes
-- as one JSON array of rows (keys unique within it): one parameter, parsed by the server,
-- where arrays per column cost the client more to send. Returns the id and key of each row
-- inserted; a key already taken is skipped (the caller reads those with jobs_by_keys and
-- compares fingerprints, rolling back on a conflict, so the whole batch is written or none).
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS b(kind text, provider text, idempotency_key text, fingerprint text, amount bigint,
             currency text, customer text, payment_method text, parent_job_id uuid,
             params jsonb)
)
INSERT INTO jobs (kind, provider, idempotency_key, fingerprint, amount, currency, customer,
                  payment_method, parent_job_id, params, max_attempts, deadline_at,
                  changed_by, change_reason, dispatched_at)
SELECT kind::job_kind, provider, idempotency_key, fingerprint, amount, currency, customer,
       payment_method, parent_job_id, params, %(max_attempts)s,
       now() + make_interval(secs => %(horizon_s)s), %(changed_by)s, 'accepted', now()
FROM batch
-- One lock order for every batch: two batches sharing keys wait, never deadlock.
ORDER BY idempotency_key
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, idempotency_key;

-- name: jobs_by_keys
SELECT * FROM jobs WHERE idempotency_key = ANY(%(keys)s::text[]);

-- name: notify_dispatch_many
-- notify_dispatch for a batch, in one statement (delivered at the caller's commit).
SELECT count(pg_notify('orchestrator_dispatch', id::text)) AS n
FROM unnest(%(ids)s::uuid[]) AS id;

-- name: open_transaction
-- On a caller's connection that is not in autocommit and has no transaction open yet: opens
-- its implicit transaction, so that our work becomes a savepoint of it (left for the caller
-- to commit) rather than a transaction of its own, committed behind the caller's back.
SELECT 1 AS opened;

-- name: reserve_capture
-- orch.capture(), inside its transaction, the charge locked: reserve the capture's amount on an
-- uncaptured authorization that is not past its deadline and has no live or succeeded capture
-- or void (jobs_capture_within_amount and jobs_one_live_settler_idx back it).
UPDATE jobs
SET capture_reserved = %(amount)s
WHERE id = %(id)s
  AND kind = 'charge'
  AND state::text = 'succeeded'
  AND captured_amount = 0
  AND capture_reserved = 0
  AND %(amount)s <= amount
  AND capture_before > now()
  AND NOT EXISTS (
      SELECT 1 FROM jobs s
      WHERE s.parent_job_id = %(id)s AND s.kind IN ('capture', 'void')
        AND s.state NOT IN ('failed', 'cancelled'))
RETURNING *;

-- name: live_settler
-- The charge's capture or void job that is live or succeeded (at most one), if any.
SELECT * FROM jobs
WHERE parent_job_id = %(id)s AND kind IN ('capture', 'void')
  AND state NOT IN ('failed', 'cancelled')
LIMIT 1;

-- name: count_voids
-- Void jobs a charge has had (each ended failed or cancelled but the live one): the next one's
-- key is numbered after them.
SELECT count(*) AS n FROM jobs WHERE parent_job_id = %(id)s AND kind = 'void';

-- name: cancel_job
-- orch.cancel(): compare-and-set, only out of pending or retrying (a running job is held by a
-- worker whose provider call may be in flight). Never while the provider may hold a result for
-- the job's current key: an ambiguous attempt under the current key generation, a same-key
-- resend after no response (%(same_key_reason)s), or a stored success event not processed yet.
UPDATE jobs
SET state = 'cancelled',
    lease_owner = NULL,
    lease_expires_at = NULL,
    changed_by = %(actor)s,
    change_reason = %(reason)s
WHERE id = %(id)s
  AND state::text IN ('pending', 'retrying')
  AND NOT (state::text = 'retrying' AND change_reason = %(same_key_reason)s)
  AND NOT EXISTS (
      SELECT 1 FROM job_attempts a
      WHERE a.job_id = jobs.id AND a.key_generation = jobs.key_generation
        AND a.outcome = 'ambiguous')
  AND NOT EXISTS (
      SELECT 1 FROM webhook_events e
      WHERE e.subject_job_id = jobs.id AND e.status = 'received' AND e.reports_success)
RETURNING *;

-- name: dispatch_due
-- The clock's due dispatch (orchestrator.maintenance.schedule): live jobs due within the lead
-- (lead_s, at most the broker's delay window) for which no message was sent for that due time
-- (dispatched_at before it: the job was scheduled past the window, so no broker holds a
-- message for it). Oldest due first, marked dispatched for their due time in the same
-- statement; the caller sends each with the delay returned (zero for a job due already). The
-- WHERE repeats jobs_scheduled_idx's predicate word for word, so the planner reads only that
-- small index (tests/integration/test_schedule.py checks the plan). A job under a lookup
-- lease is left to its holder.
UPDATE jobs
SET dispatched_at = GREATEST(next_attempt_at, now())
WHERE id IN (
    SELECT id FROM jobs
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
      AND (dispatched_at IS NULL OR dispatched_at < next_attempt_at)
      AND next_attempt_at <= now() + make_interval(secs => %(lead_s)s)
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, GREATEST(EXTRACT(EPOCH FROM next_attempt_at - now()), 0)::float8 AS delay_s;

-- name: next_scheduled_due
-- Seconds until the earliest job scheduled in PostgreSQL is due, zero or less when one is due
-- already (it came due while the last batch was being sent); no row: none is scheduled. The
-- clock sleeps until then. The first entry of jobs_scheduled_idx not under a lookup lease
-- (dispatch_due leaves those: counting them would wake the clock for nothing).
SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in_s
FROM jobs
WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
  AND (dispatched_at IS NULL OR dispatched_at < next_attempt_at)
  AND (lease_expires_at IS NULL OR lease_expires_at < now())
ORDER BY next_attempt_at
LIMIT 1;

-- name: count_scheduled_due
SELECT count(*) AS n FROM jobs
WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
  AND (dispatched_at IS NULL OR dispatched_at < next_attempt_at)
  AND next_attempt_at <= now()
  AND (lease_expires_at IS NULL OR lease_expires_at < now());

-- name: due_in
-- How long until a waiting job is due, by the database's clock (s; negative: overdue).
SELECT extract(epoch FROM next_attempt_at - now())::float8 AS s
FROM jobs WHERE id = %(id)s AND state::text IN ('pending', 'retrying');
