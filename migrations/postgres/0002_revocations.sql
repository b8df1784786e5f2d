-- The revocation feed: one row per ended session, kept while its access tokens may
-- still be unexpired (expires_at), in commit-independent order (seq).
CREATE TABLE revocations (
    seq        BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revocations_expires_at_idx ON revocations (expires_at);
