-- A session is one row: its current refresh token's hash, generation and lifetime, and
-- what the grace window needs of the previous one. A refresh updates only these
-- columns, none of them indexed, so no index is touched.
-- Sessions opened before this migration have generation 0 and no token here: their
-- token is in refresh_tokens, and their next rotation moves them to generation 1.
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN token_hash BLOB;           -- SHA-256 of the current token
ALTER TABLE sessions ADD COLUMN token_issued_at BIGINT;     -- also when the previous one was spent
ALTER TABLE sessions ADD COLUMN token_expires_at BIGINT;
ALTER TABLE sessions ADD COLUMN prev_hash BLOB;            -- SHA-256 of the previous generation's token
ALTER TABLE sessions ADD COLUMN prev_sealed BLOB;          -- the current token, sealed under the previous one
ALTER TABLE sessions ADD COLUMN prev_replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN prev_ip TEXT;               -- who spent the previous token
ALTER TABLE sessions ADD COLUMN prev_agent BIGINT;
