-- The ledger checked against the provider (orchestrator.db.ops.OpsStore): the jobs an audit
-- compares, recorded drift, and the audits' own rows.
-- Parameters are always bound (%(name)s), never formatted in.

-- name: ledger_jobs_created_since
-- The charge and refund jobs of an audit's window (served by jobs_created_idx), with the
-- Connect account each was made on.
SELECT id::text AS id, kind::text AS kind, state::text AS state, amount, currency,
       provider_ref, params->>'stripe_account' AS stripe_account
FROM jobs
WHERE created_at >= %(since)s::timestamptz
  AND kind IN ('charge', 'refund')
  AND provider = %(provider)s;

-- name: ledger_jobs_by_id
SELECT id::text AS id, kind::text AS kind, state::text AS state, amount, currency,
       provider_ref, params->>'stripe_account' AS stripe_account
FROM jobs
WHERE id = ANY(%(ids)s::uuid[]);

-- name: ledger_drift_insert
-- Findings as parallel arrays, one statement; one already recorded adds nothing.
INSERT INTO ledger_drift (provider, kind, job_id, provider_ref, detail, source)
SELECT * FROM unnest(%(provider)s::text[], %(kind)s::text[], %(job_id)s::text[],
                     %(provider_ref)s::text[], %(detail)s::text[], %(source)s::text[])
ON CONFLICT ON CONSTRAINT ledger_drift_once DO NOTHING
RETURNING id;

-- name: ledger_drift_recent
SELECT * FROM ledger_drift ORDER BY found_at DESC, id DESC LIMIT %(limit)s;

-- name: ledger_drift_by_kind
SELECT kind, count(*) AS n FROM ledger_drift GROUP BY kind;

-- name: ledger_audit_start
INSERT INTO ledger_audits (ran_by, since) VALUES (%(ran_by)s, %(since)s)
RETURNING *;

-- name: ledger_audit_finish
UPDATE ledger_audits
SET finished_at = now(), objects = %(objects)s, jobs = %(jobs)s,
    drift_count = %(drift_count)s, error = %(error)s
WHERE id = %(id)s
RETURNING *;

-- name: ledger_audit_last
-- The latest audit run by `ran_by` (any outcome), or the latest that completed.
SELECT * FROM ledger_audits
WHERE ran_by = %(ran_by)s
  AND (NOT %(completed)s OR (finished_at IS NOT NULL AND error IS NULL))
ORDER BY started_at DESC, id DESC
LIMIT 1;
