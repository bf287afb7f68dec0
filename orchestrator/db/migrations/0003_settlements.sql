-- Migration 0003: settlement outbox (hooks, wait, settled totals) and the capture/void kinds.
-- Every statement is idempotent.

-- New values are not used in this migration (PostgreSQL refuses that in the transaction that
-- adds them): migration 0004 and the code use them.
ALTER TYPE job_kind ADD VALUE IF NOT EXISTS 'capture';
ALTER TYPE job_kind ADD VALUE IF NOT EXISTS 'void';

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

-- Settles before this migration, counted once from the transition history.
INSERT INTO job_settled_totals (kind, provider, state, n)
SELECT j.kind, j.provider, t.to_state, count(*)
FROM job_transitions t JOIN jobs j ON j.id = t.job_id
WHERE t.to_state IN ('succeeded', 'failed', 'dead', 'cancelled')
GROUP BY 1, 2, 3
ON CONFLICT (kind, provider, state) DO NOTHING;

-- The transition trigger now also writes the outbox and notifies waiters.
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
            PERFORM pg_notify('orchestrator_settled', NEW.id::text);
        END IF;
    ELSE
        INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason)
        VALUES (NEW.id, NULL, NEW.state, NEW.changed_by, NEW.change_reason);
    END IF;
    RETURN NEW;
END $$;
