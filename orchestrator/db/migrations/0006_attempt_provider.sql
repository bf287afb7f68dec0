-- Migration 0006: each attempt records the provider it called. A charge may fail over to a
-- second provider when the first provably never executed it (connection refused, 429, the
-- breaker or the rate limiter denied the call), so one job's attempts can name two
-- providers. Rows of earlier releases keep NULL: their job's provider. Adding a nullable
-- column rewrites nothing. Every statement is idempotent.
ALTER TABLE job_attempts ADD COLUMN IF NOT EXISTS provider provider_name;
