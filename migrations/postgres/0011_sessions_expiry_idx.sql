-- no-transaction
-- The janitor finds sessions that expired. Built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
