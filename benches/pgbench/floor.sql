-- pgbench: the refresh floor's rotation (const ROTATE, /work/shared/bench/floor/src/main.rs)
-- on its own table (/work/shared/bench/pg/setup.sql: 1M tokens, token n hashed
-- sha256(n as text)), in refresh chains like rotate.sql: each client spends its current
-- token and inserts the successor. Client i starts at original token i * 15625 + 1
-- (spread over the table, like the sessions in setup.sql); its token after k rotations is
-- key k * 1000000 + i * 15625 + 1, above every original. $1 is that hash, $2 a random
-- id (the floor's is a v4 UUID), $3 the next key's hash.
-- Run with -M prepared -D step=0. One row or the client aborts (\gset): a broken chain.
\set old 1000000 * :step + :client_id * 15625 + 1
\set new 1000000 * (:step + 1) + :client_id * 15625 + 1
WITH used AS (UPDATE refresh_tokens SET used_at = now()
  WHERE token_hash = sha256(convert_to(:old::text, 'UTF8')) AND used_at IS NULL RETURNING id, session_id)
  INSERT INTO refresh_tokens (id, session_id, token_hash, parent_id, issued_at, expires_at)
  SELECT gen_random_uuid(), session_id, sha256(convert_to(:new::text, 'UTF8')), id, now(), now() + interval '30 days' FROM used RETURNING session_id
\gset r_
\set step :step + 1
