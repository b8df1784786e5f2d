-- Tessera's schema as the server migrates it: every migration, in order (run.sh checks
-- this list against migrations/postgres/, so a new one cannot be left out). psql runs
-- them in autocommit, which CREATE INDEX CONCURRENTLY (0010-0012) needs.
\ir ../../migrations/postgres/0001_init.sql
\ir ../../migrations/postgres/0002_revocations.sql
\ir ../../migrations/postgres/0003_login_throttle.sql
\ir ../../migrations/postgres/0004_client_policy.sql
\ir ../../migrations/postgres/0005_grace_replays.sql
\ir ../../migrations/postgres/0007_lifecycle.sql
\ir ../../migrations/postgres/0010_unspent_tokens_expiry_idx.sql
\ir ../../migrations/postgres/0011_sessions_expiry_idx.sql
\ir ../../migrations/postgres/0012_audit_events_at_idx.sql
\ir ../../migrations/postgres/0013_dpop.sql
\ir ../../migrations/postgres/0016_locks.sql
\ir ../../migrations/postgres/0017_session_tokens.sql

-- Sessions as a login writes them (generation 1, its token on the row), logged in an
-- hour before rotate.sql's "now" (1800000000): 30-day session, 7-day token.
-- Users 0..63 each hold the session pgbench client i rotates: id md5(i), token of
-- generation g hashed sha256(int8send(i) || int8send(g)), as rotate.sql computes it.
INSERT INTO users (id, email, password_hash, roles, created_at)
SELECT md5('user' || i)::uuid, 'pgbench' || i || '@bench.test',
       '$argon2id$v=19$m=19456,t=2,p=1$' || md5('salt' || i) || '$' || md5('hash' || i) || md5('h' || i),
       '', 1790000000
  FROM generate_series(0, 25063) AS i;

-- 100,000 other sessions of 25,000 other users, so the table and its indexes are not
-- a few pages. The clients' 64 sessions are spread among them (one every 1,563 rows),
-- as a live table keeps the few sessions refreshing now: not packed on one page, where
-- 32 rotating rows would share one page's free space for their HOT versions.
INSERT INTO sessions (id, user_id, client_id, scope, created_at, last_used_at, expires_at,
                      user_agent, ip, generation, token_hash, token_issued_at, token_expires_at)
SELECT CASE WHEN k IS NULL THEN md5('session' || n)::uuid ELSE md5(k::text)::uuid END,
       md5('user' || COALESCE(k, 64 + n % 25000))::uuid,
       'app', '', 1799996400, 1799996400, 1799996400 + 2592000,
       'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
       '10.0.' || (n % 250) || '.' || (n / 250 % 250), 1,
       CASE WHEN k IS NULL THEN sha256(convert_to('session' || n, 'UTF8'))
            ELSE sha256(int8send(k) || int8send(1)) END,
       1799996400, 1799996400 + 604800
  FROM (SELECT n, CASE WHEN n % 1563 = 0 AND n / 1563 < 64 THEN n / 1563 END AS k
          FROM generate_series(0, 100063) AS n) AS g
 ORDER BY n;

-- A table that autovacuum has seen (visibility map, statistics), as a live one has.
VACUUM (ANALYZE) users, sessions;
