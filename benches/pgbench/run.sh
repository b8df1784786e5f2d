#!/usr/bin/env bash
# pgbench figures for the rotation statement alone, no HTTP: Tessera's (rotate.sql, a
# fresh database with Tessera's schema), then the refresh floor's (floor.sql, its own
# table), C clients rotating their own chains for T seconds each, one after the other.
# Each side is checked against the database afterwards.
# Usage: benches/pgbench/run.sh [clients=32] [seconds=10] [both|tessera|floor]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
floor_setup=${FLOOR_SETUP:-/work/shared/bench/pg/setup.sql}
c=${1:-32}; t=${2:-10}; which=${3:-both}
# setup.sql holds 64 client sessions; the floor's chains start 15625 tokens apart.
(( c >= 1 && c <= 64 )) || { echo "clients: 1 to 64" >&2; exit 1; }
pg=(-X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres)
db=tessera_pgbench_$$; floor_db=tessera_pgbench_floor_$$
logs=$(mktemp -d)
cleanup() {
  for d in "$db" "$floor_db"; do PGOPTIONS="-c client_min_messages=warning" psql "${pg[@]}" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
failed=0

# One pgbench run: prints pgbench's tps and latency lines and the tail from its
# per-transaction log (third field, microseconds), as the load benchmark reports it.
# Leaves per-client transaction counts in $logs/NAME.done as SQL VALUES, total in $total.
bench() {
  local name=$1 dbn=$2 script=$3 var=$4 rc=0
  # The setup's dirty pages are written now, not by a checkpoint inside the measurement.
  psql "${pg[@]}" -d "$dbn" -c CHECKPOINT
  pgbench -h 127.0.0.1 -U postgres -n -M prepared -D "$var" -c "$c" -j 2 -T "$t" -f "$script" \
    --log --log-prefix="$logs/$name" "$dbn" >"$logs/$name.out" 2>&1 || rc=$?
  grep -E "processed|failed|aborted|latency|tps" "$logs/$name.out" || true
  if (( rc != 0 )); then echo "pgbench exited $rc:"; grep -v "^ " "$logs/$name.out" | tail -n 5; failed=1; fi
  # Only completed transactions: a failed one logs a word, not a time.
  { cat "$logs/$name".[0-9]* 2>/dev/null || true; } | awk '$3 ~ /^[0-9]+$/' >"$logs/$name.tx"
  awk '{print $3}' "$logs/$name.tx" | sort -n | awk '{a[NR]=$1} END {
    printf "latency p50 = %.2f ms, p90 = %.2f ms, p99 = %.2f ms\n", a[int(NR*0.50)]/1000, a[int(NR*0.90)]/1000, a[int(NR*0.99)]/1000 }'
  awk '{n[$1]++} END {s = "(-1, 0)"; for (k in n) s = s ", (" k ", " n[k] ")"; print s}' "$logs/$name.tx" >"$logs/$name.done"
  total=$(wc -l <"$logs/$name.tx")
}

# The HOT share of TABLE's updates once the clients' counts reach the statistics: each
# backend flushes them when it exits, a moment after pgbench returns.
hot_ratio() {
  local dbn=$1 table=$2 upd=0 hot=0
  for _ in $(seq 50); do
    read -r upd hot < <(psql "${pg[@]}" -d "$dbn" -AtF' ' -c \
      "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '$table'")
    (( upd >= total )) && break
    sleep 0.2
  done
  awk -v u="$upd" -v h="$hot" -v tb="$table" 'BEGIN {
    printf "HOT ratio of %s: %d of %d updates = %.3f\n", tb, h, u, (u > 0 ? h / u : 0) }'
}

# A check's verdict: "ok|message", printed, failing the run when not ok.
verdict() {
  echo "check: ${1#*|}"
  [[ ${1%%|*} == ok ]] || { echo "check FAILED"; failed=1; }
}

tps() { grep -oP '^tps = \K[0-9.]+' "$logs/$1.out" || echo 0; }

if [[ $which != floor ]]; then
  # setup.sql names every migration; one added to the folder but not there would leave
  # this measuring an older schema.
  if ! diff <(cd "$project/migrations/postgres" && ls -- *.sql) \
            <(grep -oP '^\\ir \.\./\.\./migrations/postgres/\K\S+' "$here/setup.sql") >/dev/null; then
    echo "setup.sql does not apply exactly the migrations in migrations/postgres/, in order" >&2; exit 1
  fi
  psql "${pg[@]}" -c "CREATE DATABASE $db"
  psql "${pg[@]}" -d "$db" -f "$here/setup.sql" >/dev/null
  echo "== Tessera pg::ROTATE (rotate.sql), c=$c, ${t} s"
  bench tessera "$db" "$here/rotate.sql" generation=1
  # Every client's session advanced by exactly its transactions and holds the token of
  # its generation (and the previous one's hash); no other session moved.
  verdict "$(psql "${pg[@]}" -d "$db" -At -c "
    WITH done (client, tx) AS (VALUES $(cat "$logs/tessera.done"))
    SELECT CASE WHEN exact = $c AND chained = $c AND advanced = $total AND others = 0 THEN 'ok' ELSE 'bad' END
           || '|' || format('%s of %s sessions advanced by their own transaction count; generations advanced %s, transactions %s; chains intact %s of %s; other sessions moved %s',
                            exact, $c, advanced, $total, chained, $c, others)
      FROM (SELECT count(*) FILTER (WHERE d.client IS NOT NULL AND s.generation - 1 = COALESCE(x.tx, 0)) AS exact,
                   count(*) FILTER (WHERE d.client IS NOT NULL
                                      AND s.token_hash = sha256(int8send(d.client) || int8send(s.generation))
                                      AND (s.generation = 1
                                           OR s.prev_hash = sha256(int8send(d.client) || int8send(s.generation - 1)))) AS chained,
                   COALESCE(sum(s.generation - 1), 0) AS advanced,
                   count(*) FILTER (WHERE d.client IS NULL AND s.generation <> 1) AS others
              FROM sessions AS s
              LEFT JOIN generate_series(0, $c - 1) AS d (client) ON s.id = md5(d.client::text)::uuid
              LEFT JOIN done AS x ON x.client = d.client) AS r")"
  hot_ratio "$db" sessions
  tessera_tps=$(tps tessera)
fi

if [[ $which != tessera ]]; then
  psql "${pg[@]}" -c "CREATE DATABASE $floor_db"
  # (Its DROP TABLE IF EXISTS notices a fresh database has no table yet.)
  PGOPTIONS='-c client_min_messages=warning' psql "${pg[@]}" -d "$floor_db" -f "$floor_setup" >/dev/null
  echo "== floor ROTATE (floor.sql), c=$c, ${t} s"
  bench floor "$floor_db" "$here/floor.sql" step=0
  # One successor per transaction; each client's last one (key tx * 1e6 + i * 15625 + 1)
  # is its only unspent token, and nothing else was spent.
  verdict "$(psql "${pg[@]}" -d "$floor_db" -At -c "
    WITH done (client, tx) AS (VALUES $(cat "$logs/floor.done"))
    SELECT CASE WHEN successors = $total AND heads = $c AND unspent_successors = moved AND spent = $total THEN 'ok' ELSE 'bad' END
           || '|' || format('successors inserted %s, transactions %s; chain heads unspent where counted %s of %s; unspent successors %s (clients that rotated %s); tokens spent %s',
                            successors, $total, heads, $c, unspent_successors, moved, spent)
      FROM (SELECT count(*) FILTER (WHERE parent_id IS NOT NULL) AS successors,
                   count(*) FILTER (WHERE parent_id IS NOT NULL AND used_at IS NULL) AS unspent_successors,
                   count(*) FILTER (WHERE used_at IS NOT NULL) AS spent,
                   (SELECT count(*) FROM done WHERE tx > 0) AS moved,
                   (SELECT count(*) FROM generate_series(0, $c - 1) AS g (client)
                      LEFT JOIN done AS x ON x.client = g.client
                      JOIN refresh_tokens AS h
                        ON h.token_hash = sha256(convert_to((COALESCE(x.tx, 0)::bigint * 1000000 + g.client * 15625 + 1)::text, 'UTF8'))
                       AND h.used_at IS NULL) AS heads
              FROM refresh_tokens) AS r")"
  hot_ratio "$floor_db" refresh_tokens
  floor_tps=$(tps floor)
fi

if [[ $which == both ]]; then
  awk -v a="$tessera_tps" -v b="$floor_tps" -v c="$c" 'BEGIN {
    printf "c=%d: Tessera %.0f tps, floor %.0f tps, ratio %.3f\n", c, a, b, (b > 0 ? a / b : 0) }'
fi
exit "$failed"
