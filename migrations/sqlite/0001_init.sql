-- Tessera schema (SQLite). Times are Unix seconds (BIGINT), the same on both
-- stores, so the rules code compares plain numbers it is given.

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL DEFAULT '',   -- space-separated
    disabled_at   BIGINT,
    created_at    BIGINT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

-- OAuth clients. `app` is the default public client of first-party apps.
CREATE TABLE clients (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT,                          -- NULL: public client
    created_at  BIGINT NOT NULL
);
INSERT INTO clients (id, name, secret_hash, created_at) VALUES ('app', 'First-party apps', NULL, 0);

-- One row per login: the refresh-token family.
CREATE TABLE sessions (
    id             BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    scope          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,            -- absolute lifetime
    revoked_at     BIGINT,
    revoked_reason TEXT,
    user_agent     TEXT,
    ip             TEXT
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Refresh tokens by SHA-256 of their plaintext. A spent token points at its successor
-- and keeps it sealed under a key derived from its own plaintext (grace replays).
CREATE TABLE refresh_tokens (
    hash             BLOB PRIMARY KEY,
    session_id       BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    spent_at         BIGINT,
    successor_hash   BLOB,
    sealed_successor BLOB
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    private_sealed BLOB NOT NULL,
    created_at     BIGINT NOT NULL,
    activates_at   BIGINT NOT NULL,
    retires_at     BIGINT
);

CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    action     TEXT NOT NULL,
    user_id    BLOB,
    session_id BLOB,
    actor_id   BLOB,
    ip         TEXT,
    detail     TEXT NOT NULL DEFAULT '{}'      -- JSON object
);
CREATE INDEX audit_events_user_id_idx ON audit_events (user_id, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);
