-- A session is one row: its current refresh token's hash, generation and lifetime, and
-- what the grace window needs of the previous one. A refresh updates only these
-- columns, none of them indexed, so the update is HOT (no index is touched) when the
-- page has room: fillfactor 70 leaves it (for pages written from now on).
-- Sessions opened before this migration have generation 0 and no token here: their
-- token is in refresh_tokens, and their next rotation moves them to generation 1.
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN token_hash BYTEA;           -- SHA-256 of the current token
ALTER TABLE sessions ADD COLUMN token_issued_at BIGINT;     -- also when the previous one was spent
ALTER TABLE sessions ADD COLUMN token_expires_at BIGINT;
ALTER TABLE sessions ADD COLUMN prev_hash BYTEA;            -- SHA-256 of the previous generation's token
ALTER TABLE sessions ADD COLUMN prev_sealed BYTEA;          -- the current token, sealed under the previous one
ALTER TABLE sessions ADD COLUMN prev_replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN prev_ip TEXT;               -- who spent the previous token
ALTER TABLE sessions ADD COLUMN prev_agent BIGINT;
ALTER TABLE sessions SET (fillfactor = 70);
