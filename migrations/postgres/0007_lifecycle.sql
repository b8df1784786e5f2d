-- The janitor finds what can no longer matter by these times.
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Readiness is a write that commits: one row every instance's /readyz upserts, so a
-- read-only database (a failover to a standby) or a full disk makes instances unready.
CREATE TABLE readiness_probe (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL
);
