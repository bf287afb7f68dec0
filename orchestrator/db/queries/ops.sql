-- Operator surface (orchestrator.db.ops.OpsStore): listings, replay / adopt / discard, the
-- audit trail, metrics, broker dead letters and the demo's read-outs.
-- Listings page by keyset on (created_at, id), newest first. The first page passes the
-- sentinel cursor ('infinity', the largest uuid), so the row comparison is always an index
-- condition, whatever the page.
-- Parameters are always bound (%(name)s), never formatted in. Each state change checks the
-- state it expects in its WHERE clause: no row back means another process got there first.
-- A replay, adoption or discard names its job by id and compares the state as text, so that
-- only the primary key can find the row, never a scan of the whole DLQ (jobs_dead_created_idx)
-- per job (queries/jobs.sql says more).

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

-- name: ops_count_dead
SELECT count(*) AS n FROM jobs
WHERE state = 'dead'
  AND created_at >= %(created_after)s::timestamptz
  AND created_at < %(created_before)s::timestamptz
  AND (%(kind)s::job_kind IS NULL OR kind = %(kind)s::job_kind)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
  AND (%(error_code)s::text IS NULL OR last_error_code = %(error_code)s::text);

-- name: ops_replay_job
-- dead -> pending with a fresh attempt budget and retry horizon; the application key is
-- untouched, the provider key generation moves on only by `generation_step` (decided from
-- the provider's answer, orchestrator.ops.replay.plan_replay). The generation in the WHERE
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
    WHERE id = %(id)s AND state::text = 'dead' AND key_generation = %(expected_generation)s
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
    WHERE id = %(id)s AND state::text = 'dead'
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
    WHERE id = %(id)s AND state::text = 'dead'
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
-- By the provider each attempt called (a charge that failed over has attempts at two). Only
-- an attempt recorded before 0006, with no provider of its own, reads its job's: the scrape
-- does not look up a job per attempt, in an index that grows with every job ever made.
SELECT COALESCE(a.provider, (SELECT j.provider FROM jobs j WHERE j.id = a.job_id)) AS provider,
       a.outcome::text AS outcome, count(*) AS n
FROM job_attempts a
WHERE a.finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1, 2;

-- name: metrics_attempt_latency
-- width_bucket over upper bounds + 1: bucket i holds durations <= bounds[i] (integers, ms).
-- The provider as in metrics_attempt_outcomes.
SELECT COALESCE(a.provider, (SELECT j.provider FROM jobs j WHERE j.id = a.job_id)) AS provider,
       width_bucket(a.duration_ms, %(bounds_ms)s::integer[]) AS bucket,
       count(*) AS n, sum(a.duration_ms) AS total_ms
FROM job_attempts a
WHERE a.finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1, 2;

-- name: broker_dead_letters_recent
SELECT * FROM broker_dead_letters ORDER BY seen_at DESC, message_id LIMIT %(limit)s;

-- name: broker_dead_letters_by_action
SELECT action, count(*) AS n FROM broker_dead_letters GROUP BY action;

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

-- /metrics (orchestrator.ops.metrics): what a scrape reads costs what is live, never history
-- (job rows are kept forever). tests/integration/test_metrics.py checks the buffers each one
-- touches stay flat as settled jobs pile up.

-- name: metrics_live_jobs
-- Jobs in the live states passed (never the settled ones): an index range per state on
-- jobs_state_created_idx, so only live rows are visited.
SELECT state::text AS state, count(*) AS n
FROM jobs
WHERE state = ANY(%(states)s::job_state[])
GROUP BY state;

-- name: metrics_dlq_size
-- An index range over dead rows only: the partial index jobs_dead_created_idx or the 'dead'
-- range of jobs_state_created_idx, whichever the planner prefers; cost follows the DLQ.
SELECT count(*) AS n FROM jobs WHERE state = 'dead';

-- name: metrics_settled_totals
-- Settles ever, by kind, provider and state: the drained totals plus the outbox not drained
-- yet. One statement, one snapshot: the drain moves rows from one to the other in a single
-- transaction, so a settle is counted exactly once, whichever side it is on.
SELECT kind::text AS kind, provider::text AS provider, state::text AS state,
       sum(n)::bigint AS n
FROM (
    SELECT kind, provider, state, n FROM job_settled_totals
    UNION ALL
    SELECT kind, provider, state, count(*) AS n FROM job_settlements
    GROUP BY kind, provider, state
) AS settled
GROUP BY kind, provider, state
ORDER BY kind, provider, state;
