#!/usr/bin/env bash
# pgbench figure for one rotation statement: a fresh database with Tessera's schema,
# then C clients rotating their own chains for T seconds.
# Usage: benches/pgbench/run.sh [clients=32] [seconds=10]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
c=${1:-32}; t=${2:-10}
db=tessera_pgbench_$$
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db"
trap 'psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db" >/dev/null' EXIT
psql -q -h 127.0.0.1 -U postgres -d "$db" -f "$here/../../migrations/postgres/0001_init.sql"
psql -q -h 127.0.0.1 -U postgres -d "$db" -f "$here/setup.sql"
pgbench -h 127.0.0.1 -U postgres -n -M prepared -D parent=init -c "$c" -j 2 -T "$t" -f "$here/rotate.sql" "$db" \
  | grep -E "tps|latency|failed"
psql -h 127.0.0.1 -U postgres -d "$db" -tAc \
  "SELECT 'tokens issued: ' || count(*) - 64 || ', sessions with two unspent tokens: ' || (SELECT count(*) FROM (SELECT session_id FROM refresh_tokens WHERE spent_at IS NULL GROUP BY session_id HAVING count(*) > 1) d) FROM refresh_tokens"
