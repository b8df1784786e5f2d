-- pgbench: the production rotation statement (src/store/postgres.rs) in refresh chains.
-- Each client spends its current token and issues the next; the successor's hash is
-- computed in SQL (sha256 of the parent's) so the chain needs no client-side work.
-- Run with -M prepared -D parent=init (see README.md in this folder).
WITH spent AS (
    UPDATE refresh_tokens AS t
       SET spent_at = 1800000000, successor_hash = sha256(t.hash), sealed_successor = '\x00'
      FROM sessions AS s JOIN users AS u ON u.id = s.user_id
     WHERE t.hash = CASE WHEN :parent = 'init' THEN sha256(int8send(:client_id)) ELSE decode(:parent, 'hex') END
       AND t.spent_at IS NULL AND t.expires_at > 1800000000
       AND s.id = t.session_id AND s.revoked_at IS NULL AND s.expires_at > 1800000000
       AND u.disabled_at IS NULL
    RETURNING t.hash AS parent_hash, t.session_id, s.expires_at AS session_expires_at
), issued AS (
    INSERT INTO refresh_tokens (hash, session_id, issued_at, expires_at)
    SELECT sha256(parent_hash), session_id, 1800000000, LEAST(1800000000 + 604800, session_expires_at) FROM spent
    RETURNING hash
), touched AS (
    UPDATE sessions SET last_used_at = 1800000000 FROM spent WHERE sessions.id = spent.session_id
)
SELECT encode(hash, 'hex') AS parent FROM issued
\gset
