-- Migration 0002: what the release after the first one adds. Every statement is idempotent,
-- so a database that already holds some of it (one built from a newer schema.sql) upgrades too.

-- The state machine (the README draws it). Anything else is a bug and is refused.
CREATE OR REPLACE FUNCTION job_transition_allowed(from_state job_state, to_state job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE from_state
        WHEN 'pending'    THEN to_state IN ('running', 'dead', 'cancelled')
        WHEN 'running'    THEN to_state IN ('succeeded', 'failed', 'retrying', 'unknown',
                                            'processing', 'dead')
        -- retrying -> succeeded: a webhook proves an earlier attempt succeeded after all.
        WHEN 'retrying'   THEN to_state IN ('running', 'succeeded', 'dead', 'cancelled')
        WHEN 'unknown'    THEN to_state IN ('succeeded', 'failed', 'retrying', 'processing',
                                            'dead')
        WHEN 'processing' THEN to_state IN ('succeeded', 'failed', 'dead')
        -- dead -> succeeded: a replay whose lookup finds the provider already holds a
        -- successful object adopts it instead of calling again (orchestrator.ops.service).
        WHEN 'dead'       THEN to_state IN ('pending', 'cancelled', 'succeeded')
        ELSE false  -- succeeded, failed, cancelled are final
    END
$$;

-- A verified success event stored before a worker ran the job wins over a new attempt: the
-- claim looks for one (claim_job in queries/jobs.sql).
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS subject_job_id uuid;
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS reports_success boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS webhook_events_unprocessed_success_idx ON webhook_events (subject_job_id)
    WHERE status = 'received' AND reports_success;

-- On-session charges that need the customer: the PaymentIntent's next_action and client_secret.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS provider_details jsonb;

-- The ledger checked against the provider (orchestrator.ops.ledger, orchestrator.maintenance.audit).
-- Each row is one disagreement found between the jobs and the provider's own objects, by a
-- webhook (a success event for a job that ended failed or cancelled) or by an audit (Stripe's
-- strongly consistent lists compared with the jobs of a window). Recorded once: the same kind,
-- job and provider object found again (by the next audit, or by an audit after the webhook)
-- adds nothing. No foreign key: a provider object may name a job we never had.
CREATE TABLE IF NOT EXISTS ledger_drift (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider      text NOT NULL,
    -- success_without_succeeded_job: a successful provider object for a job that is missing or
    --   ended failed, dead or cancelled; succeeded_without_object: a succeeded job with no
    --   successful provider object; amount_mismatch: amount or currency differ;
    --   duplicate_success: more than one successful object for one job.
    kind          text NOT NULL CHECK (kind IN ('success_without_succeeded_job',
                                                'succeeded_without_object',
                                                'amount_mismatch', 'duplicate_success')),
    job_id        text,                   -- the job named (metadata.orchestrator_job_id)
    provider_ref  text,                   -- the provider's object (pi_..., re_...)
    detail        text NOT NULL CHECK (char_length(detail) <= 500),
    source        text NOT NULL CHECK (source IN ('webhook', 'audit')),
    found_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_drift_once UNIQUE NULLS NOT DISTINCT (kind, job_id, provider_ref)
);
-- `orchestrator drift list`, /ops/api/drift and the dashboard read the newest first.
CREATE INDEX IF NOT EXISTS ledger_drift_found_idx ON ledger_drift (found_at DESC, id DESC);

-- Each audit run: the window it covered and what it found. The clock audits when its last
-- audit is older than ORCHESTRATOR_AUDIT_INTERVAL_S, from the start of its last completed one
-- (minus an overlap). A failed run has error set and no drift_count; finished_at NULL: it is
-- still running, or its process died.
CREATE TABLE IF NOT EXISTS ledger_audits (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_by       text NOT NULL CHECK (ran_by IN ('clock', 'cli')),
    since        timestamptz NOT NULL,    -- jobs and objects created from here on were compared
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    objects      integer,                 -- provider objects naming a job, listed
    jobs         integer,                 -- charge and refund jobs of the window
    drift_count  integer,                 -- findings (recorded before, or now)
    error        text
);
CREATE INDEX IF NOT EXISTS ledger_audits_started_idx ON ledger_audits (ran_by, started_at DESC);
