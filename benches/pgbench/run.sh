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
logs=$(mktemp -d)
trap 'psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db" >/dev/null; rm -rf "$logs"' EXIT
pgbench -h 127.0.0.1 -U postgres -n -M prepared -D parent=init -c "$c" -j 2 -T "$t" -f "$here/rotate.sql" \
  --log --log-prefix="$logs/tx" "$db" | grep -E "tps|latency|failed"
# Per-transaction latencies (third field, microseconds): the tail, as the load benchmark reports it.
cat "$logs"/tx* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {
  printf "latency p50 = %.2f ms, p90 = %.2f ms, p99 = %.2f ms\n", a[int(NR*0.50)]/1000, a[int(NR*0.90)]/1000, a[int(NR*0.99)]/1000 }'
psql -h 127.0.0.1 -U postgres -d "$db" -tAc \
  "SELECT 'tokens issued: ' || count(*) - 64 || ', sessions with two unspent tokens: ' || (SELECT count(*) FROM (SELECT session_id FROM refresh_tokens WHERE spent_at IS NULL GROUP BY session_id HAVING count(*) > 1) d) FROM refresh_tokens"
