-- Grace replays are capped per spent refresh token, and a replay from another address
-- or user agent than the rotation is told apart in the audit trail.
ALTER TABLE refresh_tokens ADD COLUMN replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refresh_tokens ADD COLUMN spent_ip TEXT;
ALTER TABLE refresh_tokens ADD COLUMN spent_agent BIGINT;   -- SHA-256 of the user agent, first 8 bytes
