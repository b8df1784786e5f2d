-- One user, and one session with a first token per pgbench client (ids 0..63).
INSERT INTO users (id, email, password_hash, roles, created_at)
VALUES ('00000000-0000-0000-0000-000000000001', 'pgbench@bench.test', 'x', '', 0);
INSERT INTO sessions (id, user_id, client_id, scope, created_at, last_used_at, expires_at)
SELECT md5(i::text)::uuid, '00000000-0000-0000-0000-000000000001', 'app', '', 0, 0, 4000000000
  FROM generate_series(0, 63) AS i;
INSERT INTO refresh_tokens (hash, session_id, issued_at, expires_at)
SELECT sha256(int8send(i)), md5(i::text)::uuid, 0, 4000000000 FROM generate_series(0, 63) AS i;
