-- DPoP (RFC 9449). A session opened with a proof is bound to that key: its refresh
-- tokens rotate only with a proof by it (`dpop_jkt`, the RFC 7638 thumbprint). A client
-- may require proofs. Proofs are remembered by (key, jti) until their `iat` is too old
-- to be accepted anyway, so a replay is refused.
ALTER TABLE sessions ADD COLUMN dpop_jkt TEXT;
ALTER TABLE clients ADD COLUMN require_dpop BOOLEAN NOT NULL DEFAULT 0;
CREATE TABLE dpop_proofs (
    key        BLOB PRIMARY KEY,               -- SHA-256 of thumbprint and jti
    expires_at BIGINT NOT NULL
);
CREATE INDEX dpop_proofs_expires_at_idx ON dpop_proofs (expires_at);
