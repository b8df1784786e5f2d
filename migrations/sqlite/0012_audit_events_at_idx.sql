-- no-transaction
-- The janitor finds audit events past their retention.
CREATE INDEX IF NOT EXISTS audit_events_at_idx ON audit_events (at);
