-- Migration 0008: the ten CHECKs on jobs that relate several columns become one, jobs_rules,
-- which calls a PL/pgSQL function holding the same rules under the same names. PostgreSQL
-- parses every CHECK expression of a table again for each INSERT and UPDATE statement; with
-- three such statements per job that was about a fifth of the database's CPU per job.
-- The new CHECK is validated against every existing row once (the table is locked meanwhile:
-- about 1 s per 1,000,000 jobs). Every statement is idempotent.

-- Every rule relating several of a job's columns, in one function called by one CHECK,
-- jobs_rules. PostgreSQL parses a table's CHECK expressions again for every INSERT and UPDATE
-- statement, and jobs takes three of those per job: ten CHECKs cost about a fifth of the
-- database's CPU per job, the call of one PL/pgSQL function (its plan kept by the session)
-- next to nothing. A broken rule fails the statement as a CHECK would, with SQLSTATE 23514
-- (check_violation) and the rule's name as the constraint name.
CREATE OR REPLACE FUNCTION jobs_row_rules(
    kind job_kind, state job_state, amount bigint, currency text, payment_method text,
    parent_job_id uuid, lease_owner text, lease_expires_at timestamptz, provider_ref text,
    dead_reason text, unknown_cause text, attempts integer, max_attempts integer,
    refunded_amount bigint, capture_reserved bigint, captured_amount bigint
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    broken text;
BEGIN
    -- Like a CHECK, a rule that evaluates to NULL holds (the IF does not fire).
    IF NOT (kind <> 'charge' OR (amount IS NOT NULL AND currency IS NOT NULL
                                 AND payment_method IS NOT NULL)) THEN
        broken := 'jobs_charge_shape';
    ELSIF NOT (kind <> 'refund' OR parent_job_id IS NOT NULL) THEN
        broken := 'jobs_refund_shape';
    -- A capture or void job points at its charge.
    ELSIF NOT (kind NOT IN ('capture', 'void') OR parent_job_id IS NOT NULL) THEN
        broken := 'jobs_settler_shape';
    -- A running job always has a holder and a lease deadline.
    ELSIF NOT (state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
    THEN
        broken := 'jobs_running_has_lease';
    -- A success always names the provider object that proves it.
    ELSIF NOT (state <> 'succeeded' OR provider_ref IS NOT NULL) THEN
        broken := 'jobs_succeeded_has_ref';
    ELSIF NOT (state <> 'dead' OR dead_reason IS NOT NULL) THEN
        broken := 'jobs_dead_has_reason';
    ELSIF NOT (state <> 'unknown' OR unknown_cause IS NOT NULL) THEN
        broken := 'jobs_unknown_has_cause';
    ELSIF NOT (attempts <= max_attempts) THEN
        broken := 'jobs_attempts_bounded';
    -- A charge's refunds never exceed what was charged (reserve_refund).
    ELSIF NOT (refunded_amount >= 0
               AND (kind = 'charge' OR refunded_amount = 0)
               AND refunded_amount <= COALESCE(amount, 0)) THEN
        broken := 'jobs_refunds_within_amount';
    -- Its capture never exceeds what was authorized (reserve_capture), and an authorization's
    -- refunds stay within what was captured.
    ELSIF NOT (capture_reserved >= 0
               AND (kind = 'charge' OR (capture_reserved = 0 AND captured_amount IS NULL))
               AND capture_reserved <= COALESCE(amount, 0)
               AND (captured_amount IS NULL OR captured_amount BETWEEN 0 AND capture_reserved)
               AND refunded_amount <= COALESCE(captured_amount, refunded_amount)) THEN
        broken := 'jobs_capture_within_amount';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "jobs" violates check constraint "%"', broken
        USING ERRCODE = 'check_violation', CONSTRAINT = broken, TABLE = 'jobs';
END $$;

ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_charge_shape;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_refund_shape;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_running_has_lease;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_succeeded_has_ref;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_dead_has_reason;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_unknown_has_cause;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_attempts_bounded;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_refunds_within_amount;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_capture_within_amount;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_settler_shape;

DO $$ BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_rules CHECK (jobs_row_rules(
        kind, state, amount, currency, payment_method, parent_job_id, lease_owner,
        lease_expires_at, provider_ref, dead_reason, unknown_cause, attempts, max_attempts,
        refunded_amount, capture_reserved, captured_amount));
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
