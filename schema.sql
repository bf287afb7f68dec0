-- The orchestrator's whole schema: the single source of truth for tables, states and the
-- invariants the database enforces by itself. Applied by `orchestrator migrate`; every
-- statement is idempotent, so applying it again is a no-op.
--
-- Invariants held here rather than in code:
--   * one job per application idempotency key        (jobs_idempotency_key_key)
--   * states and kinds are closed sets                (enums job_state, job_kind, attempt_outcome)
--   * a state change follows the state machine        (jobs_check_transition trigger)
--   * every state change is recorded with who and why (job_transitions, same trigger)
--   * amounts, currencies and keys have Stripe's shape (CHECK constraints)

CREATE EXTENSION IF NOT EXISTS pgcrypto;  -- gen_random_uuid() on PostgreSQL < 13

DO $$ BEGIN
    -- pending:    accepted, waiting for a worker.
    -- running:    claimed by a worker holding a lease; a provider call may be in flight.
    -- retrying:   the last attempt provably did not execute; due again at next_attempt_at.
    -- unknown:    an attempt may or may not have executed; resolved by lookup before any retry.
    -- processing: the provider accepted it and reports a pending state; polled until final.
    -- succeeded, failed, cancelled: terminal. dead: terminal until an operator acts.
    CREATE TYPE job_state AS ENUM (
        'pending', 'running', 'retrying', 'unknown', 'processing',
        'succeeded', 'failed', 'dead', 'cancelled'
    );
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE job_kind AS ENUM ('charge', 'refund', 'email');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    -- How one provider call ended, as classified by the provider module:
    -- succeeded:    the provider holds a successful object.
    -- pending:      the provider accepted it and will settle later.
    -- permanent:    the provider refused it for good (decline, invalid request, auth).
    -- not_executed: provably nothing happened (refused connection, 429, key in use).
    -- ambiguous:    it may have executed (timeout, cut connection, 5xx).
    CREATE TYPE attempt_outcome AS ENUM (
        'succeeded', 'pending', 'permanent', 'not_executed', 'ambiguous'
    );
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TABLE IF NOT EXISTS jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind              job_kind NOT NULL,
    provider          text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    state             job_state NOT NULL DEFAULT 'pending',

    -- The application's key: one job per key, forever. Stripe caps keys at 255 characters.
    idempotency_key   text NOT NULL UNIQUE
                      CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- sha256 (hex) of the canonical request: the same key with another request is a conflict.
    fingerprint       text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),

    -- Charges and refunds: integer minor units, within Stripe's 8-digit maximum.
    amount            bigint CHECK (amount BETWEEN 1 AND 99999999),
    currency          text CHECK (currency ~ '^[a-z]{3}$'),
    customer          text CHECK (length(customer) BETWEEN 1 AND 255),
    payment_method    text CHECK (length(payment_method) BETWEEN 1 AND 255),
    -- A refund points at the charge it refunds.
    parent_job_id     uuid REFERENCES jobs (id),
    -- Everything else the provider call needs (metadata, email fields), as given.
    params            jsonb NOT NULL DEFAULT '{}'::jsonb,

    -- The provider idempotency key is derived from (id, key_generation). The generation moves
    -- on only when the earlier attempt is proven absent at the provider.
    key_generation    integer NOT NULL DEFAULT 0 CHECK (key_generation >= 0),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- Created + retry horizon: no attempt is scheduled past it (inside key retention).
    deadline_at       timestamptz NOT NULL,
    -- Who holds the job and until when. Set by a claim; an expired lease means the holder died.
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- Why an `unknown` job is unknown: no_response (a same-key resend is safe),
    -- server_error (the key replays the error: only a lookup settles it), lease_expired.
    unknown_cause     text CHECK (unknown_cause IN ('no_response', 'server_error', 'lease_expired')),
    last_attempt_at   timestamptz,
    -- When a message for this job was last handed to the broker (the sweep's resend guard).
    dispatched_at     timestamptz,

    provider_ref      text,          -- the provider's object id (pi_..., re_..., message id)
    provider_status   text,          -- the provider's own status word for that object
    last_error_code   text,
    last_error        text CHECK (length(last_error) <= 2000),
    dead_reason       text,

    -- Who made the latest state change and why; copied to job_transitions by the trigger.
    changed_by        text NOT NULL CHECK (length(changed_by) BETWEEN 1 AND 200),
    change_reason     text NOT NULL CHECK (length(change_reason) BETWEEN 1 AND 500),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT jobs_charge_shape CHECK (
        kind <> 'charge' OR (amount IS NOT NULL AND currency IS NOT NULL
                             AND payment_method IS NOT NULL)),
    CONSTRAINT jobs_refund_shape CHECK (kind <> 'refund' OR parent_job_id IS NOT NULL),
    -- A running job always has a holder and a lease deadline.
    CONSTRAINT jobs_running_has_lease CHECK (
        state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- A success always names the provider object that proves it.
    CONSTRAINT jobs_succeeded_has_ref CHECK (state <> 'succeeded' OR provider_ref IS NOT NULL),
    CONSTRAINT jobs_dead_has_reason CHECK (state <> 'dead' OR dead_reason IS NOT NULL),
    CONSTRAINT jobs_unknown_has_cause CHECK (state <> 'unknown' OR unknown_cause IS NOT NULL),
    CONSTRAINT jobs_attempts_bounded CHECK (attempts <= max_attempts)
);

-- The dispatch sweep and workers look for due work: a partial index keeps it small.
CREATE INDEX IF NOT EXISTS jobs_due_idx ON jobs (next_attempt_at)
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing');
-- Lease expiry scans only running jobs.
CREATE INDEX IF NOT EXISTS jobs_running_lease_idx ON jobs (lease_expires_at)
    WHERE state = 'running';
-- Operators list jobs by state, newest first (the DLQ is state = 'dead').
CREATE INDEX IF NOT EXISTS jobs_state_created_idx ON jobs (state, created_at DESC, id);
CREATE INDEX IF NOT EXISTS jobs_parent_idx ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

-- One row per provider call, whatever its outcome.
CREATE TABLE IF NOT EXISTS job_attempts (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id               uuid NOT NULL REFERENCES jobs (id),
    attempt              integer NOT NULL CHECK (attempt >= 1),
    key_generation       integer NOT NULL CHECK (key_generation >= 0),
    provider_key         text CHECK (length(provider_key) <= 255),  -- idempotency key sent
    worker               text NOT NULL,
    outcome              attempt_outcome NOT NULL,
    error_class          text,      -- e.g. CardError, APIConnectionError
    error_code           text,      -- e.g. card_declined, rate_limit, read_timeout
    http_status          integer CHECK (http_status BETWEEN 100 AND 599),
    provider_request_id  text,      -- Stripe's Request-Id, for support tickets
    provider_ref         text,
    duration_ms          integer NOT NULL CHECK (duration_ms >= 0),
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL DEFAULT now(),
    -- A job's attempt numbers never repeat: two workers can't both record attempt 3.
    CONSTRAINT job_attempts_unique UNIQUE (job_id, attempt)
);

-- One row per state change: from, to, by whom and why. Written only by the trigger below.
CREATE TABLE IF NOT EXISTS job_transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    from_state  job_state,            -- NULL for the insert
    to_state    job_state NOT NULL,
    changed_by  text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS job_transitions_job_idx ON job_transitions (job_id, id);

-- The state machine (docs/state_machine.md draws it). Anything else is a bug and is refused.
CREATE OR REPLACE FUNCTION job_transition_allowed(from_state job_state, to_state job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE from_state
        WHEN 'pending'    THEN to_state IN ('running', 'dead', 'cancelled')
        WHEN 'running'    THEN to_state IN ('succeeded', 'failed', 'retrying', 'unknown',
                                            'processing', 'dead')
        WHEN 'retrying'   THEN to_state IN ('running', 'dead', 'cancelled')
        WHEN 'unknown'    THEN to_state IN ('succeeded', 'failed', 'retrying', 'processing',
                                            'dead')
        WHEN 'processing' THEN to_state IN ('succeeded', 'failed', 'dead')
        WHEN 'dead'       THEN to_state IN ('pending', 'cancelled')
        ELSE false  -- succeeded, failed, cancelled are final
    END
$$;

CREATE OR REPLACE FUNCTION jobs_record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.state = OLD.state THEN
            RETURN NEW;
        END IF;
        IF NOT job_transition_allowed(OLD.state, NEW.state) THEN
            RAISE EXCEPTION 'job %: transition % -> % is not allowed', NEW.id, OLD.state, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.updated_at := now();
        INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
        VALUES (NEW.id, OLD.state, NEW.state, NEW.changed_by, NEW.change_reason);
    ELSE
        INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
        VALUES (NEW.id, NULL, NEW.state, NEW.changed_by, NEW.change_reason);
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS jobs_check_transition ON jobs;
CREATE TRIGGER jobs_check_transition BEFORE UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_record_transition();
DROP TRIGGER IF EXISTS jobs_record_insert ON jobs;
CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_record_transition();
