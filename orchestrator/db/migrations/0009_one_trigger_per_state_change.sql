-- Migration 0009: a job's state change fires one row trigger instead of four. The authorization
-- rules (jobs_guard_authorization) and what a settling refund, capture or void does to its
-- charge (jobs_release_refund, jobs_settle_authorization) move into jobs_record_transition:
-- PostgreSQL parsed the three triggers' WHEN clauses again for every UPDATE of a job, about a
-- tenth of the database's CPU per job. Same rules, same errors, same rows written.
-- CREATE OR REPLACE and DROP: nothing is rewritten. Every statement is idempotent.

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

DROP TRIGGER IF EXISTS jobs_guard_authorization ON jobs;
DROP TRIGGER IF EXISTS jobs_release_refund ON jobs;
DROP TRIGGER IF EXISTS jobs_settle_authorization ON jobs;
DROP FUNCTION IF EXISTS jobs_guard_authorization();
DROP FUNCTION IF EXISTS jobs_release_refund();
DROP FUNCTION IF EXISTS jobs_settle_authorization();
