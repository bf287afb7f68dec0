-- Migration 0004: authorize and capture, capture and void jobs, cancel. Every statement is
-- idempotent. The job_kind values 'capture' and 'void' were added (and committed) by 0003.

-- The state machine (the README draws it): succeeded -> cancelled for a voided authorization.
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
DO $$ BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_capture_within_amount CHECK (
        capture_reserved >= 0
        AND (kind = 'charge' OR (capture_reserved = 0 AND captured_amount IS NULL))
        AND capture_reserved <= COALESCE(amount, 0)
        AND (captured_amount IS NULL OR captured_amount BETWEEN 0 AND capture_reserved)
        -- an authorization's refunds stay within what was captured
        AND refunded_amount <= COALESCE(captured_amount, refunded_amount));
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_settler_shape CHECK (
        kind NOT IN ('capture', 'void') OR parent_job_id IS NOT NULL);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
-- At most one capture or void per charge that is live or succeeded (a dead one still counts:
-- an operator may replay it); one that ended failed or cancelled moved no money.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_live_settler_idx ON jobs (parent_job_id)
    WHERE kind IN ('capture', 'void') AND state NOT IN ('failed', 'cancelled');

-- A charge moving into succeeded as an authorization (provider_status requires_capture) is
-- marked uncaptured with its deadline: the provider's capture_before (stored by the executor in
-- provider_details), else 7 days after the job was made (never later than the real one).
-- succeeded -> cancelled is allowed for an uncaptured authorization only.
CREATE OR REPLACE FUNCTION jobs_guard_authorization() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'succeeded' AND NEW.state = 'cancelled'
       AND NOT (NEW.kind = 'charge' AND NEW.captured_amount = 0 AND NEW.capture_reserved = 0)
    THEN
        RAISE EXCEPTION 'job %: only an uncaptured authorization can go succeeded -> cancelled',
            NEW.id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kind = 'charge' AND NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
       AND NEW.provider_status = 'requires_capture' AND NEW.captured_amount IS NULL
    THEN
        NEW.captured_amount := 0;
        NEW.capture_before := COALESCE(
            to_timestamp((NEW.provider_details ->> 'capture_before')::double precision),
            NEW.created_at + interval '7 days');
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS jobs_guard_authorization ON jobs;
CREATE TRIGGER jobs_guard_authorization BEFORE UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'cancelled') AND OLD.state <> NEW.state)
    EXECUTE FUNCTION jobs_guard_authorization();

-- A capture or void job that settles acts on its charge in the same transaction: a capture
-- that succeeded records the captured amount; one that ended failed or cancelled gives its
-- reservation back; a void that succeeded moves the charge succeeded -> cancelled.
CREATE OR REPLACE FUNCTION jobs_settle_authorization() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'capture' AND NEW.state = 'succeeded' THEN
        UPDATE jobs SET captured_amount = NEW.amount, provider_status = 'succeeded'
        WHERE id = NEW.parent_job_id;
    ELSIF NEW.kind = 'capture' THEN
        UPDATE jobs SET capture_reserved = capture_reserved - NEW.amount
        WHERE id = NEW.parent_job_id;
    ELSIF NEW.state = 'succeeded' THEN
        UPDATE jobs
        SET state = 'cancelled',
            provider_status = NEW.provider_status,
            changed_by = NEW.changed_by,
            change_reason = left('authorization voided by job ' || NEW.id || ': '
                                 || COALESCE(NEW.params ->> 'reason', 'cancelled'), 500)
        WHERE id = NEW.parent_job_id AND state = 'succeeded';
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS jobs_settle_authorization ON jobs;
CREATE TRIGGER jobs_settle_authorization AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.kind IN ('capture', 'void') AND OLD.state <> NEW.state
          AND (NEW.state = 'succeeded'
               OR (NEW.kind = 'capture' AND NEW.state IN ('failed', 'cancelled')
                   AND OLD.state NOT IN ('failed', 'cancelled'))))
    EXECUTE FUNCTION jobs_settle_authorization();

-- Authorizations made before this migration (capture_method=manual passed through).
UPDATE jobs
SET captured_amount = 0, capture_before = created_at + interval '7 days'
WHERE kind = 'charge' AND state = 'succeeded' AND provider_status = 'requires_capture'
  AND captured_amount IS NULL;
