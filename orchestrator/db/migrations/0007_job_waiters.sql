-- Migration 0007: a settle sends NOTIFY orchestrator_settled only for a job someone waits for
-- (Orchestrator.wait registers in job_waiters). PostgreSQL serializes the commits of every
-- transaction that notifies, so a NOTIFY in every settle capped the whole fleet's settle rate.
-- A new table and CREATE OR REPLACE: nothing is rewritten. Every statement is idempotent.
CREATE TABLE IF NOT EXISTS job_waiters (
    job_id  uuid NOT NULL,
    waiter  uuid NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, waiter)
);

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
        IF NEW.state IN ('succeeded', 'failed', 'dead', 'cancelled') THEN
            -- A settle: into the outbox (settlement hooks, settled totals) and announced at
            -- commit to whoever waits (Orchestrator.wait).
            INSERT INTO job_settlements (job_id, kind, provider, state)
            VALUES (NEW.id, NEW.kind, NEW.provider, NEW.state);
            -- Announced at commit only to whoever waits for this job (Orchestrator.wait):
            -- a NOTIFY serializes the commits of every notifying transaction, so a settle
            -- nobody waits for sends none. This statement runs with the row locked and, the
            -- function being volatile, with a snapshot of its own: a waiter that registered
            -- while holding FOR SHARE on the row (add_waiter) is seen here.
            DELETE FROM job_waiters WHERE job_id = NEW.id;
            IF FOUND THEN
                PERFORM pg_notify('orchestrator_settled', NEW.id::text);
            END IF;
        END IF;
    ELSE
        INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
        VALUES (NEW.id, NULL, NEW.state, NEW.changed_by, NEW.change_reason);
    END IF;
    RETURN NEW;
END $$;
