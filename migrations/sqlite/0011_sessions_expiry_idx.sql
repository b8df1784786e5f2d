-- no-transaction
-- The janitor finds sessions that expired.
CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
