-- The orchestrator's whole schema in one readable file: the single source of truth for tables,
-- states and the invariants the database enforces by itself. `orchestrator migrate` applies
-- the numbered files of orchestrator/db/migrations/ in order (recorded in schema_migrations);
-- applied in order they make exactly this schema (tests/integration/test_migrations.py). A
-- change is made here and, as a new numbered migration, there. Every statement is idempotent.
--
-- Invariants held here rather than in code:
--   * one job per application idempotency key        (jobs_idempotency_key_key)
--   * states and kinds are closed sets                (enums job_state, job_kind, attempt_outcome)
--   * a state change follows the state machine        (jobs_check_transition trigger)
--   * every state change is recorded with who and why (job_transitions, same trigger)
--   * amounts, currencies and keys have Stripe's shape (domains)
--   * refunds never exceed their charge               (jobs_refunds_within_amount, below)
--   * captures never exceed their authorization, one  (jobs_capture_within_amount,
--     live capture or void per charge, refunds within   jobs_one_live_settler_idx,
--     the captured amount, voids only uncaptured        jobs_check_transition trigger)

-- Which numbered migrations a database has (orchestrator.db.pool.migrate creates it too).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY CHECK (version > 0),
    name        text NOT NULL,
    checksum    text,                 -- sha256 of the file; NULL for an adopted baseline
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- gen_random_uuid() is built in from PostgreSQL 13; only older servers need pgcrypto for it
-- (the embedded PostgreSQL of `orchestrator dev` ships without pgcrypto).
DO $$ BEGIN
    IF current_setting('server_version_num')::int < 130000 THEN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    END IF;
END $$;

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
    -- capture: capture an authorized (capture=False) charge; void: cancel one at the provider.
    CREATE TYPE job_kind AS ENUM ('charge', 'refund', 'email', 'capture', 'void');
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

-- Column shapes as domains. PostgreSQL re-reads a table's CHECK constraints for every INSERT
-- and UPDATE statement and re-checks them all on every updated row, changed columns or not; a
-- domain's check is read once per connection and runs only where a value is written. So a
-- column's own shape is a domain, and the rules relating several columns are one CHECK
-- (jobs_rules, migration 0008).
DO $$
DECLARE
    d text[];
BEGIN
    FOREACH d SLICE 1 IN ARRAY ARRAY[
        ['provider_name', 'text', 'VALUE ~ ''^[a-z][a-z0-9_]{0,31}$'''],
        -- Stripe caps idempotency keys at 255 characters.
        ['key_text', 'text', 'length(VALUE) BETWEEN 1 AND 255'],
        ['sha256_hex', 'text', 'VALUE ~ ''^[0-9a-f]{64}$'''],
        -- Integer minor units, within Stripe's 8-digit maximum.
        ['minor_units', 'bigint', 'VALUE BETWEEN 1 AND 99999999'],
        ['currency_code', 'text', 'VALUE ~ ''^[a-z]{3}$'''],
        -- A provider's object or token id as given (cus_..., pm_...).
        ['provider_token', 'text', 'length(VALUE) BETWEEN 1 AND 255'],
        ['counter', 'integer', 'VALUE >= 0'],
        ['attempt_budget', 'integer', 'VALUE BETWEEN 1 AND 100'],
        ['unknown_cause_word', 'text',
         'VALUE IN (''no_response'', ''server_error'', ''lease_expired'')'],
        ['error_text', 'text', 'length(VALUE) <= 2000'],
        -- Who changed a job (api, a worker id, cli:<user>...) and why.
        ['actor_text', 'text', 'length(VALUE) BETWEEN 1 AND 200'],
        ['reason_text', 'text', 'length(VALUE) BETWEEN 1 AND 500'],
        ['http_status_code', 'integer', 'VALUE BETWEEN 100 AND 599']
    ] LOOP
        IF to_regtype(d[1]) IS NULL THEN
            EXECUTE format('CREATE DOMAIN %I AS %s CHECK (%s)', d[1], d[2], d[3]);
        END IF;
    END LOOP;
END $$;

CREATE TABLE IF NOT EXISTS jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind              job_kind NOT NULL,
    provider          provider_name NOT NULL,
    state             job_state NOT NULL DEFAULT 'pending',

    -- The application's key: one job per key, forever. Stripe caps keys at 255 characters.
    idempotency_key   key_text NOT NULL UNIQUE,
    -- sha256 (hex) of the canonical request: the same key with another request is a conflict.
    fingerprint       sha256_hex NOT NULL,

    -- Charges and refunds: the amount in minor units.
    amount            minor_units,
    currency          currency_code,
    customer          provider_token,
    payment_method    provider_token,
    -- A refund points at the charge it refunds.
    parent_job_id     uuid REFERENCES jobs (id),
    -- Everything else the provider call needs (metadata, email fields), as given.
    params            jsonb NOT NULL DEFAULT '{}'::jsonb,

    -- The provider idempotency key is derived from (id, key_generation). The generation moves
    -- on only when the earlier attempt is proven absent at the provider.
    key_generation    counter NOT NULL DEFAULT 0,
    attempts          counter NOT NULL DEFAULT 0,
    max_attempts      attempt_budget NOT NULL,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- Created + retry horizon: no attempt is scheduled past it (inside key retention).
    deadline_at       timestamptz NOT NULL,
    -- Who holds the job and until when. Set by a claim; an expired lease means the holder died.
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- Why an `unknown` job is unknown: no_response (a same-key resend is safe),
    -- server_error (the key replays the error: only a lookup settles it), lease_expired.
    unknown_cause     unknown_cause_word,
    last_attempt_at   timestamptz,
    -- When the job's latest message was handed to the broker, or, for a short broker delay,
    -- when it comes out of it. PostgreSQL owns the schedule: a live job whose dispatched_at
    -- is before its next_attempt_at has no message for that due time (it was scheduled past
    -- the broker's delay window), and the clock dispatches it when due (jobs_scheduled_idx);
    -- one due and unclaimed for the dispatch grace since then gets its message again.
    dispatched_at     timestamptz,

    provider_ref      text,          -- the provider's object id (pi_..., re_..., message id)
    provider_status   text,          -- the provider's own status word for that object
    last_error_code   text,
    last_error        error_text,
    dead_reason       text,

    -- Who made the latest state change and why; copied to job_transitions by the trigger.
    changed_by        actor_text NOT NULL,
    change_reason     reason_text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
    -- The rules relating several columns are one CHECK, jobs_rules (jobs_row_rules, below).
);

-- The dispatch sweep and workers look for due work: a partial index keeps it small.
CREATE INDEX IF NOT EXISTS jobs_due_idx ON jobs (next_attempt_at)
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing');
-- (Migration 0005.) The clock's due dispatch: only the live jobs scheduled in PostgreSQL, no
-- message sent for their due time, by due time. However long the backlog of queued jobs (all
-- in jobs_due_idx), the clock reads the first entry to know when to wake and takes the due
-- ones in order from a small index.
CREATE INDEX IF NOT EXISTS jobs_scheduled_idx ON jobs (next_attempt_at)
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
      AND (dispatched_at IS NULL OR dispatched_at < next_attempt_at);
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
    key_generation       counter NOT NULL,
    provider_key         key_text,  -- the idempotency key sent
    worker               text NOT NULL,
    outcome              attempt_outcome NOT NULL,
    error_class          text,      -- e.g. CardError, APIConnectionError
    error_code           text,      -- e.g. card_declined, rate_limit, read_timeout
    http_status          http_status_code,
    provider_request_id  text,      -- Stripe's Request-Id, for support tickets
    provider_ref         text,
    duration_ms          counter NOT NULL,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL DEFAULT now(),
    -- The provider called (a charge that failed over has attempts at two); NULL on rows of
    -- releases before 0006: the job's provider.
    provider             provider_name,
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

-- Every settle (a move into succeeded, failed, dead or cancelled), written by the transition
-- trigger in the settling transaction: an outbox. The clock drains it (orchestrator.maintenance
-- .settlements) in batches: it sends each row to the settlement hooks
-- (ORCHESTRATOR_SETTLE_HOOKS), adds the batch to job_settled_totals and deletes it, in one
-- transaction committed after the sends (so a hook hears of every settle at least once).
CREATE TABLE IF NOT EXISTS job_settlements (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL,
    kind        job_kind NOT NULL,
    provider    provider_name NOT NULL,
    state       job_state NOT NULL,
    settled_at  timestamptz NOT NULL DEFAULT now()
);
-- Settles counted since the database was made (/metrics: orchestrator_jobs_settled_total is
-- this plus the outbox not drained yet): a scrape reads a few rows, whatever the history.
CREATE TABLE IF NOT EXISTS job_settled_totals (
    kind      job_kind NOT NULL,
    provider  provider_name NOT NULL,
    state     job_state NOT NULL,
    n         bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (kind, provider, state)
);

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
        -- succeeded -> cancelled: an authorization never captured, voided at the provider by
        -- its void job (jobs_guard_authorization refuses it for anything else).
        WHEN 'succeeded'  THEN to_state IN ('cancelled')
        ELSE false  -- failed and cancelled are final
    END
$$;

-- (Migration 0007.) Who waits for a job to settle (Orchestrator.wait, one row per waiting
-- call): the transition trigger sends NOTIFY orchestrator_settled only for a job listed here,
-- and deletes its rows as it does. A waiter that ends first deletes its own row; one that
-- died leaves it until the job settles. No foreign key: a waiter never blocks a job's writes.
CREATE TABLE IF NOT EXISTS job_waiters (
    job_id  uuid NOT NULL,
    waiter  uuid NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, waiter)
);

-- Every state change of a job, in one row trigger without a WHEN (a trigger's WHEN is parsed
-- again for every statement): the state machine, the authorization rules, the record of the
-- transition, the settle's outbox and waiters, and what a refund, capture or void that settles
-- does to its charge. That last part writes another row of jobs from a BEFORE trigger: the
-- row being updated is already locked (a concurrent change made the statement re-check it
-- first), and anything refused later in the statement rolls it back with the rest. One
-- statement must not both settle such a job and update its charge: PostgreSQL refuses to
-- update a row that a trigger fired by the same statement changed first. Every statement that
-- settles a job names that one job (queries/jobs.sql, ops.sql, webhooks.sql).
CREATE OR REPLACE FUNCTION jobs_record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
        VALUES (NEW.id, NULL, NEW.state, NEW.changed_by, NEW.change_reason);
        RETURN NEW;
    END IF;
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT job_transition_allowed(OLD.state, NEW.state) THEN
        RAISE EXCEPTION 'job %: transition % -> % is not allowed', NEW.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state = 'succeeded' AND NEW.kind = 'charge'
       AND NEW.provider_status = 'requires_capture' AND NEW.captured_amount IS NULL THEN
        -- An authorization: marked uncaptured, with its deadline: the provider's
        -- capture_before (stored by the executor in provider_details), else 7 days after the
        -- job was made (never later than the real one).
        NEW.captured_amount := 0;
        NEW.capture_before := COALESCE(
            to_timestamp((NEW.provider_details ->> 'capture_before')::double precision),
            NEW.created_at + interval '7 days');
    ELSIF NEW.state = 'cancelled' AND OLD.state = 'succeeded'
          AND NOT (NEW.kind = 'charge' AND NEW.captured_amount = 0 AND NEW.capture_reserved = 0)
    THEN
        RAISE EXCEPTION 'job %: only an uncaptured authorization can go succeeded -> cancelled',
            NEW.id USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
    VALUES (NEW.id, OLD.state, NEW.state, NEW.changed_by, NEW.change_reason);
    IF NEW.state NOT IN ('succeeded', 'failed', 'dead', 'cancelled') THEN
        RETURN NEW;
    END IF;
    -- A settle: into the outbox (settlement hooks, settled totals) ...
    INSERT INTO job_settlements (job_id, kind, provider, state)
    VALUES (NEW.id, NEW.kind, NEW.provider, NEW.state);
    -- ... and announced at commit only to whoever waits for this job (Orchestrator.wait): a
    -- NOTIFY serializes the commits of every notifying transaction, so a settle nobody waits
    -- for sends none. This statement runs with the row locked and, the function being
    -- volatile, with a snapshot of its own: a waiter that registered while holding FOR SHARE
    -- on the row (add_waiter) is seen here.
    DELETE FROM job_waiters WHERE job_id = NEW.id;
    IF FOUND THEN
        PERFORM pg_notify('orchestrator_settled', NEW.id::text);
    END IF;
    -- A refund that ends failed (refused by the provider) or cancelled (discarded by an
    -- operator) moved no money: its reservation goes back to the charge. (Failed and cancelled
    -- are final, so this happens once.)
    IF NEW.kind = 'refund' AND NEW.state IN ('failed', 'cancelled') THEN
        UPDATE jobs SET refunded_amount = refunded_amount - NEW.amount
        WHERE id = NEW.parent_job_id;
    -- A capture that succeeded records the captured amount on its charge; one that ended
    -- failed or cancelled gives its reservation back (a dead one keeps it: it may be replayed).
    ELSIF NEW.kind = 'capture' AND NEW.state = 'succeeded' THEN
        UPDATE jobs SET captured_amount = NEW.amount, provider_status = 'succeeded'
        WHERE id = NEW.parent_job_id;
    ELSIF NEW.kind = 'capture' AND NEW.state IN ('failed', 'cancelled') THEN
        UPDATE jobs SET capture_reserved = capture_reserved - NEW.amount
        WHERE id = NEW.parent_job_id;
    -- A void that succeeded moves its charge succeeded -> cancelled.
    ELSIF NEW.kind = 'void' AND NEW.state = 'succeeded' THEN
        UPDATE jobs
        SET state = 'cancelled',
            provider_status = NEW.provider_status,
            changed_by = NEW.changed_by,
            change_reason = left('authorization voided by job ' || NEW.id || ': '
                                 || COALESCE(NEW.params ->> 'reason', 'cancelled'), 500)
        WHERE id = NEW.parent_job_id AND state = 'succeeded';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS jobs_check_transition ON jobs;
CREATE TRIGGER jobs_check_transition BEFORE UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_record_transition();
DROP TRIGGER IF EXISTS jobs_record_insert ON jobs;
CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_record_transition();

-- Provider webhook events, stored verbatim before any processing (orchestrator.webhooks).
DO $$ BEGIN
    -- received:  stored, not processed yet (the clock re-sends its message if it was lost).
    -- processed: applied to its job (which may have changed nothing: transitions never go back).
    -- ignored:   an event type we do not handle, or an object no job of ours made.
    -- failed:    processing kept failing; an operator looks at last_error.
    CREATE TYPE webhook_status AS ENUM ('received', 'processed', 'ignored', 'failed');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TABLE IF NOT EXISTS webhook_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        provider_name NOT NULL,
    event_id        text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),  -- evt_...
    type            text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    object_id       text CHECK (length(object_id) <= 255),   -- data.object.id (pi_..., ch_...)
    job_id          uuid REFERENCES jobs (id),               -- resolved while processing
    status          webhook_status NOT NULL DEFAULT 'received',
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    note            text CHECK (length(note) <= 500),        -- what processing did, and why
    last_error      error_text,
    -- The verified body as received. Never logged: it may hold customer data.
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- When a processing message was last sent (the clock's resend guard) ...
    dispatched_at   timestamptz NOT NULL DEFAULT now(),
    -- ... and until when a processor holds the event (two processors never race on one).
    lease_expires_at timestamptz,
    processed_at    timestamptz,
    -- At most one row per provider event: a redelivered event is a duplicate, not new work.
    CONSTRAINT webhook_events_provider_event_key UNIQUE (provider, event_id),
    CONSTRAINT webhook_events_done_has_time CHECK (
        (status = 'received') = (processed_at IS NULL))
);
-- The clock looks for events still waiting to be processed.
CREATE INDEX IF NOT EXISTS webhook_events_received_idx ON webhook_events (dispatched_at)
    WHERE status = 'received';
-- Operators list events newest first, and by job.
CREATE INDEX IF NOT EXISTS webhook_events_received_at_idx ON webhook_events (received_at DESC, id);
CREATE INDEX IF NOT EXISTS webhook_events_job_idx ON webhook_events (job_id) WHERE job_id IS NOT NULL;
-- The job named in the object's metadata (no foreign key: a provider may name a job of another
-- database), and whether the event reports that job's success. A claim looks for such an event
-- still unprocessed before a new attempt calls out: a webhook that came before the worker can
-- never lead to a second charge (claim_job in queries/jobs.sql).
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS subject_job_id uuid;
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS reports_success boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS webhook_events_unprocessed_success_idx ON webhook_events (subject_job_id)
    WHERE status = 'received' AND reports_success;

-- Refunds: the sum of a charge's refunds never exceeds what was charged, even under concurrent
-- refund requests. orch.refund() reserves the refund's amount on the charge row with one
-- conditional UPDATE (reserve_refund) in the same transaction as the refund job's insert; the
-- CHECK below makes an over-reservation impossible whatever code runs.
-- refunded_amount: refunds reserved against this charge (succeeded plus in flight, and dead ones
-- an operator may still replay); given back when a refund ends failed or cancelled (below).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS refunded_amount bigint NOT NULL DEFAULT 0;
-- What the app needs from the provider to finish an on-session payment: a PaymentIntent that
-- requires_action (the customer must authenticate) leaves its next_action and client_secret
-- here. Never logged (the log processor redacts client_secret).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS provider_details jsonb;

-- Operator surface (orchestrator.ops.service): who did what to which job, when and why.
-- Written in the same statement as the state change it records (or alone, for bulk runs).
CREATE TABLE IF NOT EXISTS operator_actions (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,     -- cli:<user>, http:<name> ... never a secret
    action   text NOT NULL,     -- e.g. dlq.replay, dlq.discard, dlq.adopt, dlq.replay_bulk
    target   text,              -- a job id, or the filter of a bulk run
    reason   text,
    details  jsonb
);
CREATE INDEX IF NOT EXISTS operator_actions_at_idx ON operator_actions (at DESC);

-- The DLQ is `state = 'dead'`, listed newest first with keyset pagination on (created_at, id):
-- this partial index serves the first page and every next page as one index range scan.
CREATE INDEX IF NOT EXISTS jobs_dead_created_idx ON jobs (created_at DESC, id DESC)
    WHERE state = 'dead';
-- `jobs list` without a state filter pages the same way over all jobs.
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at DESC, id DESC);
-- /metrics reads recent attempts (latency histogram, outcomes) over a short window.
CREATE INDEX IF NOT EXISTS job_attempts_finished_idx ON job_attempts (finished_at);

-- dramatiq's own dead letters (Redis `<namespace>:<queue>.XQ`), copied here by the clock
-- (orchestrator.maintenance.deadletters) so that a message dramatiq gave up on is never invisible: Redis
-- keeps them 7 days at most, and nothing lists them. No foreign key: a message may name a
-- job that does not exist (or no longer does).
CREATE TABLE IF NOT EXISTS broker_dead_letters (
    message_id       text PRIMARY KEY,          -- dramatiq's redis_message_id
    queue            text NOT NULL,
    job_id           text,                      -- args[0] of the message, when it has one
    actor_name       text,
    dead_lettered_at timestamptz NOT NULL,      -- the XQ score
    seen_at          timestamptz NOT NULL DEFAULT now(),
    job_state        text,                      -- the job's state when the clock saw it
    -- redispatched: the job was live in PostgreSQL, a new message was sent;
    -- none: the job was already terminal (or unknown): nothing to do but show it.
    action           text NOT NULL CHECK (action IN ('redispatched', 'none')),
    message          jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_dead_letters_seen_idx ON broker_dead_letters (seen_at DESC);
-- Provider events find their job by the provider's object id.
CREATE INDEX IF NOT EXISTS jobs_provider_ref_idx ON jobs (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;

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

-- Authorize now, capture later (charge(..., capture=False): capture_method=manual), capture
-- jobs and void jobs (orch.capture(), orch.cancel() of an authorization). A capture or void job
-- points at its charge (parent_job_id) and uses the charge's PaymentIntent.
-- captured_amount (charges only): NULL for a charge captured when it succeeded (all of its
-- amount) or not succeeded yet; 0 for an authorization waiting for its capture (the
-- PaymentIntent is requires_capture); the amount captured once its capture job succeeded.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS captured_amount bigint;
-- When the provider voids an uncaptured authorization (Stripe: the charge's capture_before,
-- 7 days for most online card payments). No capture is accepted from then on.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS capture_before timestamptz;
-- The amount of the charge's live or succeeded capture job, reserved by orch.capture() in the
-- transaction that inserts it (reserve_capture), given back when the capture ends failed or
-- cancelled (jobs_settle_authorization).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS capture_reserved bigint NOT NULL DEFAULT 0;
-- At most one capture or void per charge that is live or succeeded (a dead one still counts:
-- an operator may replay it); one that ended failed or cancelled moved no money.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_live_settler_idx ON jobs (parent_job_id)
    WHERE kind IN ('capture', 'void') AND state NOT IN ('failed', 'cancelled');

-- (Migration 0008.) Every rule relating several of a job's columns, in one function called
-- by one CHECK, jobs_rules. PostgreSQL parses a table's CHECK expressions again for every INSERT and UPDATE
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

DO $$ BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_rules CHECK (jobs_row_rules(
        kind, state, amount, currency, payment_method, parent_job_id, lease_owner,
        lease_expires_at, provider_ref, dead_reason, unknown_cause, attempts, max_attempts,
        refunded_amount, capture_reserved, captured_amount));
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

