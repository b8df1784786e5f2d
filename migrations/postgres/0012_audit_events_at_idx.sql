-- no-transaction
-- The janitor finds audit events past their retention. Built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_events_at_idx ON audit_events (at);
