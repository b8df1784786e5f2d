#!/usr/bin/env bash
# Tries the real upgrade OLD -> NEW on a database written by OLD, on both stores:
# legacy refresh tokens must rotate once more into the new shape, keep their grace
# replay and reuse detection, and access tokens must survive (signing keys carried over).
# Usage: benches/upgrade/try.sh [OLD_BINARY] [NEW_BINARY]
set -euo pipefail

OLD=${1:-/tmp/tessera-main}
NEW=${2:-/tmp/tessera-new}
PG=${TRY_PG:-postgres://postgres@127.0.0.1:5432}
PASSWORD='correct horse battery staple'

for tool in curl jq psql sqlite3 python3; do
  command -v "$tool" >/dev/null || { echo "FAIL missing tool: $tool"; exit 1; }
done

WORK=$(mktemp -d /tmp/tessera-upgrade.XXXXXX)
FAILS=0
SERVER_PID=''
PG_DB=''

cleanup() {
  # Leave nothing behind: a server of ours, the throwaway database, the temp dir.
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ -n $PG_DB ]]; then
    psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

STORE=''
pass() { echo "PASS [$STORE] $*"; }
fail() { echo "FAIL [$STORE] $*"; FAILS=$((FAILS + 1)); }
# check NAME DETAIL CONDITION...: one line per check, the detail shows what was seen.
check() {
  local name=$1 detail=$2; shift 2
  if "$@"; then pass "$name ($detail)"; else fail "$name ($detail)"; fi
}
# Setup that later checks depend on: a failure makes the rest meaningless, so stop.
need() {
  local name=$1; shift
  if "$@"; then pass "$name"; else fail "$name"; exit 1; fi
}

# sql QUERY: one value from the store under test.
sql() {
  case $STORE in
    postgres) psql "$PG/$PG_DB" -qAtc "$1" ;;
    sqlite) sqlite3 "$SQLITE_FILE" "$1" ;;
  esac
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start BIN LABEL: the same environment for both releases (same key: the signing keys
# are stored sealed under it, so NEW must open what OLD wrote).
start() {
  local bin=$1 label=$2 log="$WORK/$STORE-$2.log"
  env TESSERA_LISTEN="127.0.0.1:$PORT" TESSERA_DATABASE_URL="$DB_URL" \
    TESSERA_ISSUER="http://127.0.0.1:$PORT" TESSERA_SECRET_KEY="$SECRET" \
    TESSERA_LOGIN_THROTTLE=off "$bin" serve >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "---- $label log:"; tail -n 20 "$log"
  return 1
}

# stop: SIGTERM and wait (bounded), so the next binary finds the database idle.
stop() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=''
  return "$rc"
}

# post PATH ARGS...: sets CODE and BODY.
post() {
  local path=$1; shift
  CODE=$(curl -sS -o "$WORK/body" -w '%{http_code}' "http://127.0.0.1:$PORT$path" "$@")
  BODY=$(cat "$WORK/body")
}
refresh() { post /oauth/token --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$1"; }
field() { jq -r "$1 // empty" <<<"$BODY" 2>/dev/null || true; }
desc() { field .error_description; }
is_new_shape() { [[ $1 == tsr_* && ${#1} -eq 100 ]]; }
is_old_shape() { [[ $1 == tsr_* && ${#1} -eq 47 ]]; }

signup_login() { # EMAIL -> prints a token response
  post /v1/signup -H 'content-type: application/json' \
    -d "{\"email\": \"$1\", \"password\": \"$PASSWORD\"}"
  [[ $CODE == 201 ]] || { echo "signup $1: $CODE $BODY" >&2; return 1; }
  post /oauth/token --data-urlencode grant_type=password --data-urlencode "username=$1" \
    --data-urlencode "password=$PASSWORD"
  [[ $CODE == 200 ]] || { echo "login $1: $CODE $BODY" >&2; return 1; }
  echo "$BODY"
}

run_store() {
  STORE=$1
  case $STORE in
    postgres)
      PG_DB="tessera_upgrade_$$_$RANDOM"
      psql "$PG/postgres" -qAtc "CREATE DATABASE \"$PG_DB\"" >/dev/null
      DB_URL="$PG/$PG_DB" ;;
    sqlite)
      SQLITE_FILE="$WORK/sqlite/tessera.db"
      mkdir -p "$WORK/sqlite"
      DB_URL="sqlite://$SQLITE_FILE" ;;
  esac
  PORT=$(free_port)
  SECRET=$(head -c 32 /dev/urandom | base64)

  # ---- The old release writes the database.
  need "OLD $(basename "$OLD") started on $DB_URL" start "$OLD" old
  local a b c
  a=$(signup_login "a-$$@example.com") || { fail "OLD signup and password login of a-$$@example.com"; exit 1; }
  b=$(signup_login "b-$$@example.com") || { fail "OLD signup and password login of b-$$@example.com"; exit 1; }
  c=$(signup_login "c-$$@example.com") || { fail "OLD signup and password login of c-$$@example.com"; exit 1; }
  local A B C C_ACCESS A2
  A=$(jq -r .refresh_token <<<"$a"); B=$(jq -r .refresh_token <<<"$b"); C=$(jq -r .refresh_token <<<"$c")
  C_ACCESS=$(jq -r .access_token <<<"$c")
  check "OLD issued old-shape refresh tokens A, B, C" "lengths ${#A} ${#B} ${#C}" \
    eval 'is_old_shape "$A" && is_old_shape "$B" && is_old_shape "$C"'
  refresh "$A"; A2=$(field .refresh_token)
  need "OLD refreshed A once: A2 in the old shape (HTTP $CODE, length ${#A2})" \
    eval '[[ $CODE == 200 ]] && is_old_shape "$A2"'
  need "OLD stopped on SIGTERM" stop

  local sessions_before tokens_before upgraded_at
  sessions_before=$(sql "SELECT count(*) FROM sessions")
  tokens_before=$(sql "SELECT count(*) FROM refresh_tokens")
  upgraded_at=$(date +%s)

  # ---- The new release on the same database, same environment.
  need "NEW $(basename "$NEW") started on the old database" start "$NEW" new
  local v17
  v17=$(sql "SELECT count(*) FROM _sqlx_migrations WHERE version = 17 AND success")
  check "NEW migrated: _sqlx_migrations has version 17" "max version $(sql 'SELECT max(version) FROM _sqlx_migrations')" \
    test "$v17" = 1

  # Session A: the unspent legacy token rotates once more, into the new shape.
  local N1 N1b N2
  refresh "$A2"; N1=$(field .refresh_token)
  check "A2 (old shape, unspent) refreshes into the new shape N1" "HTTP $CODE, length ${#N1}" \
    eval '[[ $CODE == 200 ]] && is_new_shape "$N1"'
  refresh "$A2"; N1b=$(field .refresh_token)
  check "A2 replayed inside the grace window gets the same N1" "HTTP $CODE, same: $([[ -n $N1 && $N1b == "$N1" ]] && echo yes || echo no)" \
    eval '[[ $CODE == 200 && -n $N1 && $N1b == "$N1" ]]'
  refresh "$N1"; N2=$(field .refresh_token)
  check "N1 refreshes (N2)" "HTTP $CODE, length ${#N2}" eval '[[ $CODE == 200 ]] && is_new_shape "$N2"'
  refresh "$A2"
  check "A2 after N1 was used is reuse" "HTTP $CODE $(field .error): $(desc)" \
    eval '[[ $CODE == 400 && $(field .error) == invalid_grant && $(desc) == *"already used"* ]]'
  refresh "$N2"
  check "N2 refused: the reuse revoked session A" "HTTP $CODE: $(desc)" \
    eval '[[ $CODE == 400 && $(desc) == *"the session has been revoked"* ]]'

  # A, spent before the upgrade: refused; its session is already revoked, and nothing
  # else may be (B and C stay live).
  local revoked_before revoked_after
  revoked_before=$(sql "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
  refresh "$A"
  revoked_after=$(sql "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
  check "A (spent under OLD) refused, revokes nothing further" \
    "HTTP $CODE: $(desc); revoked sessions $revoked_before -> $revoked_after" \
    eval '[[ $CODE == 400 && $revoked_before == 1 && $revoked_after == 1 ]]'

  # Session B: the unspent legacy login token, and reuse of it once its successor is used.
  local NB1 NB2
  refresh "$B"; NB1=$(field .refresh_token)
  check "B (old shape) refreshes into the new shape" "HTTP $CODE, length ${#NB1}" \
    eval '[[ $CODE == 200 ]] && is_new_shape "$NB1"'
  refresh "$NB1"; NB2=$(field .refresh_token)
  check "B's successor refreshes" "HTTP $CODE, length ${#NB2}" eval '[[ $CODE == 200 ]] && is_new_shape "$NB2"'
  refresh "$B"
  check "B after its successor was used is reuse" "HTTP $CODE: $(desc)" \
    eval '[[ $CODE == 400 && $(desc) == *"already used"* ]]'
  refresh "$NB2"
  check "B's session revoked by that reuse" "HTTP $CODE: $(desc)" \
    eval '[[ $CODE == 400 && $(desc) == *"the session has been revoked"* ]]'

  # Session C: an access token signed by OLD verifies under NEW.
  CODE=$(curl -sS -o "$WORK/body" -w '%{http_code}' -H "authorization: Bearer $C_ACCESS" \
    "http://127.0.0.1:$PORT/v1/me"); BODY=$(cat "$WORK/body")
  check "C's OLD access token works on GET /v1/me under NEW" "HTTP $CODE, email $(field .email)" \
    eval '[[ $CODE == 200 && $(field .email) == "c-$$@example.com" ]]'

  # Rows: NEW keeps a session in one row; its refreshes must not add refresh_tokens rows.
  local sessions_after tokens_after tokens_new
  sessions_after=$(sql "SELECT count(*) FROM sessions")
  tokens_after=$(sql "SELECT count(*) FROM refresh_tokens")
  tokens_new=$(sql "SELECT count(*) FROM refresh_tokens WHERE issued_at >= $upgraded_at")
  check "NEW's refreshes wrote no refresh_tokens row" \
    "sessions $sessions_before -> $sessions_after, refresh_tokens $tokens_before -> $tokens_after, issued since upgrade $tokens_new" \
    eval '[[ $sessions_before == 3 && $sessions_after == 3 && $tokens_before == 4 && $tokens_after == 4 && $tokens_new == 0 ]]'

  need "NEW stopped on SIGTERM" stop
  if [[ $STORE == postgres ]]; then
    psql "$PG/postgres" -qAtc "DROP DATABASE \"$PG_DB\"" >/dev/null; PG_DB=''
  else
    rm -rf "$WORK/sqlite"
  fi
}

run_store postgres
run_store sqlite

STORE=all
if ((FAILS)); then echo "FAIL [$STORE] $FAILS check(s) failed"; exit 1; fi
echo "PASS [$STORE] every check passed"
