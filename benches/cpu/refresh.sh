#!/usr/bin/env bash
# Refresh chains from the floor's load generator (../shared/bench, built there by floor_ratio.sh)
# against the release server, with the CPU each process spent per 5 s window, the
# database's transaction and tuple counters, and the sessions table's HOT ratio.
# Run from the project root: C=16 benches/cpu/refresh.sh; PERF=1 adds a perf profile
# (perf.data here); EXTRA_ENV="TESSERA_X=y" reaches the server.
set -euo pipefail
C=${C:-16}; DUR=${DUR:-10}; BIN=${BIN:-$(pwd)/target/release/tessera}
PGURL=postgres://postgres@127.0.0.1:5432/postgres; base=${PGURL%/*}
loadgen=/tmp/tessera-bench-target/release/loadgen
db=tessera_prof_$$
psql -X -q "$PGURL" -c "create database $db" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TESSERA_LISTEN=127.0.0.1:$port TESSERA_DATABASE_URL=$base/$db TESSERA_ISSUER=http://127.0.0.1:$port \
TESSERA_SECRET_KEY=$(head -c 32 /dev/urandom | base64) TESSERA_LOGIN_THROTTLE=off \
TESSERA_SIGNUP_ATTEMPTS_PER_ADDRESS=1000 TESSERA_DATABASE_MAX_CONNECTIONS=$C RUST_LOG=warn \
  env ${EXTRA_ENV:-} "$BIN" serve >/tmp/prof-tessera.log 2>&1 & tpid=$!
trap 'kill $tpid 2>/dev/null || true; sleep 0.5; psql -X -q "$PGURL" -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.2; done
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
pgcpu() { local t=0; for p in $(pgrep -f "postgres: .*$db" || true); do t=$((t + $(cpu $p))); done; echo $t; }
"$loadgen" --token-url http://127.0.0.1:$port/oauth/token --client-id app \
  --signup-url http://127.0.0.1:$port/v1/signup --signup-json --users 64 --password bench-password-1 \
  --mode refresh --concurrency "$C" --duration "$DUR" > /tmp/prof-load.json 2>/dev/null & lpid=$!
sleep 3
stats() { psql -X -At "$PGURL" -c "select xact_commit, tup_inserted, tup_updated, tup_fetched, blks_hit from pg_stat_database where datname = '$db'"; }
s0=$(stats)
t0=$(cpu $tpid); p0=$(pgcpu); l0=$(cpu $lpid)
if [[ -n ${PERF:-} ]]; then perf record -F 499 -g ${PERF_TARGET:--p $tpid} -o perf.data -- sleep 5 >/dev/null 2>&1; else sleep 5; fi
t1=$(cpu $tpid); p1=$(pgcpu); l1=$(cpu $lpid)
s1=$(stats)
echo "pg_stat_database (xact_commit, tup_inserted, tup_updated, tup_fetched, blks_hit) before: $s0 after: $s1"
wait $lpid
echo "sessions (n_tup_upd, n_tup_hot_upd): $(psql -X -At "$base/$db" -c "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relname = 'sessions'")"
echo "cpu over 5 s (ticks of 10ms): tessera $((t1-t0)) postgres $((p1-p0)) loadgen $((l1-l0))"
tail -n1 /tmp/prof-load.json
