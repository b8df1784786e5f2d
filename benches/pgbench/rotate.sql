-- pgbench: the production rotation, pg::ROTATE (src/store/sessions.rs), in refresh chains.
-- Each client rotates its own session (client i: id md5(i), see setup.sql) generation
-- after generation. The statement is ROTATE's text with its parameters replaced:
--   $1 session, $2 generation, $3 its token's hash, $4 the successor's: from :client_id
--      and :generation (the hash of generation g is sha256(int8send(i) || int8send(g)),
--      so the chain needs no client-side work); $5 sealed successor: 128 bytes, the size
--      a real one has (12-byte nonce, 100-byte token, 16-byte tag); $6 now; $7 token TTL
--      (config/default.toml); $8 client; $9 scope NULL (a refresh asking for no
--      narrower one); $10, $11 caller address and agent fingerprint; $12 NULL (bearer).
-- Run with -M prepared -D generation=1 (see README.md in this folder).
-- One row or the client aborts (\gset needs exactly one): a refused rotation is a broken
-- chain, never a fast no-op counted as a transaction. Prefixed: client_id is pgbench's.
\set next :generation + 1
UPDATE sessions AS s
       SET generation = s.generation + 1, token_hash = sha256(int8send(:client_id) || int8send(:next)),
           token_issued_at = GREATEST(1800000000, floor(extract(epoch FROM clock_timestamp()))::bigint),
           token_expires_at = LEAST(1800000000 + 604800, s.expires_at),
           last_used_at = GREATEST(1800000000, floor(extract(epoch FROM clock_timestamp()))::bigint),
           prev_hash = s.token_hash, prev_sealed = decode(repeat('5a', 128), 'hex'), prev_replays = 0,
           prev_ip = '127.0.0.1', prev_agent = 1311768467294899695
      FROM users AS u
     WHERE s.id = md5(:client_id::text)::uuid AND s.generation = :generation
       AND s.token_hash = sha256(int8send(:client_id) || int8send(:generation)) AND s.token_expires_at > 1800000000
       AND s.revoked_at IS NULL AND s.expires_at > 1800000000
       AND u.id = s.user_id AND u.disabled_at IS NULL
       AND s.client_id = 'app'
       AND (NULL::text[] IS NULL OR NULL::text[] <@ string_to_array(s.scope, ' '))
       AND (s.dpop_jkt IS NULL OR s.dpop_jkt = NULL::text)
    RETURNING s.id AS session_id, s.user_id, s.client_id, s.scope,
              s.token_expires_at AS expires_at, u.roles
\gset r_
\set generation :next
