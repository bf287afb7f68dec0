-- Versioned migrations (orchestrator.db.pool.migrate): which numbered files a database has.

-- name: schema_migrations_exists
SELECT to_regclass('schema_migrations') IS NOT NULL AS present;

-- name: first_release_present
-- A database made by the first release: its jobs table, and no schema_migrations yet.
SELECT to_regclass('jobs') IS NOT NULL AS present;

-- name: create_schema_migrations
-- One row per applied migration file; the checksum tells an edited file from the one applied.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY CHECK (version > 0),
    name        text NOT NULL,
    checksum    text,                 -- sha256 of the file; NULL for an adopted baseline
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: adopt_baseline
INSERT INTO schema_migrations (version, name, checksum)
VALUES (%(version)s, 'first_release (adopted)', NULL)
ON CONFLICT (version) DO NOTHING;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: applied_migrations
SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version;
