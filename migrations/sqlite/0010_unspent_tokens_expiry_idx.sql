-- no-transaction
-- The janitor finds expired unspent refresh tokens (a small index: one unspent token per session).
CREATE INDEX IF NOT EXISTS refresh_tokens_unspent_expires_idx ON refresh_tokens (expires_at) WHERE spent_at IS NULL;
