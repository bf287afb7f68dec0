-- Migration 0005: PostgreSQL owns the schedule. A job due again past the broker's delay window
-- (ORCHESTRATOR_BROKER_DELAY_WINDOW_S) gets no delayed message; its dispatched_at stays before
-- its next_attempt_at, and the clock dispatches it when due, reading this index. Every
-- statement is idempotent.
--
-- Built inside the migration's transaction (CREATE INDEX CONCURRENTLY cannot be): it holds
-- a SHARE lock on jobs (writes wait) for as long as the build reads the table. Rows left by
-- earlier releases with a broker-delayed message (dispatched_at before next_attempt_at) enter
-- it too: the clock sends them when due as well, a duplicate message the claim makes harmless.
CREATE INDEX IF NOT EXISTS jobs_scheduled_idx ON jobs (next_attempt_at)
    WHERE state IN ('pending', 'retrying', 'unknown', 'processing')
      AND (dispatched_at IS NULL OR dispatched_at < next_attempt_at);
