#!/usr/bin/env bash
# Schemathesis against the OpenAPI document of a running server: every operation,
# every check (server errors, responses off the schema, schema-valid input refused,
# schema-invalid input accepted, ...), with an admin token for the admin routes.
#
# Starts the server on a fresh SQLite file on a free loopback port, creates an admin
# with the CLI, logs in with the password grant, runs schemathesis with a bounded
# number of examples per operation, and stops the server. Exits non-zero on any
# failure.
#
#   tests/schemathesis.sh                 # builds the debug binary first
#   TESSERA_BIN=target/release/tessera tests/schemathesis.sh
#   SCHEMATHESIS_EXAMPLES=200 tests/schemathesis.sh   # default 25 per operation
#
# Needs python3, curl and schemathesis (installed with pip when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

examples=${SCHEMATHESIS_EXAMPLES:-25}
bin=${TESSERA_BIN:-}
if [[ -z $bin ]]; then
  cargo build --quiet --bin tessera
  bin="${CARGO_TARGET_DIR:-target}/debug/tessera"
fi
command -v schemathesis >/dev/null || pip install --quiet schemathesis

work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
export TESSERA_LISTEN="127.0.0.1:$port"
export TESSERA_DATABASE_URL="sqlite://$work/tessera.db"
export TESSERA_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
export TESSERA_ISSUER="$base"
# Generated logins would otherwise be throttled within a minute (429 is documented,
# but it would hide what the handlers do with the input).
export TESSERA_LOGIN_THROTTLE=off
# A shorter drain: the run ends with SIGTERM.
export TESSERA_SHUTDOWN_DRAIN_SECS=0

"$bin" migrate >/dev/null
email=admin@schemathesis.test
password=$(head -c 24 /dev/urandom | base64)
printf '%s' "$password" | "$bin" user create --admin --email "$email" --password-stdin >/dev/null

client=$("$bin" client create --name schemathesis --confidential)
client_id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["client_id"])' "$client")
client_secret=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["client_secret"])' "$client")

"$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

login() {
  curl -fsS "$base/oauth/token" \
    --data-urlencode grant_type=password \
    --data-urlencode "username=$1" \
    --data-urlencode "password=$2" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
token=$(login "$email" "$password")
# A user of its own for the routes that end the caller's own sessions (logout), so
# the admin's session lives through the run.
curl -fsS "$base/v1/signup" -H 'content-type: application/json' \
  -d "{\"email\": \"user@schemathesis.test\", \"password\": \"$password\"}" >/dev/null
user_token=$(login user@schemathesis.test "$password")

# Each operation gets the credentials its OpenAPI security names: the admin's bearer
# token, or the confidential client's HTTP Basic.
cat >"$work/schemathesis.toml" <<TOML
# Speed is measured in benches/, not asserted here (a debug build hashes slowly on a
# busy machine): only a hang past the server's own 30 s request timeout counts.
[checks]
max_response_time = 60

[auth.openapi.bearer]
bearer = "$token"

[auth.openapi.basic]
username = "$client_id"
password = "$client_secret"

[[operations]]
include-path-regex = "^/v1/(logout|sessions)"
headers = { Authorization = "Bearer $user_token" }

# RFC 6749 §5.2: a well-formed token request with a wrong password, an unknown or spent
# refresh token, or a scope outside the grant is answered 400 (invalid_grant,
# invalid_scope). Schema-valid is not the same as valid credentials here. And
# token_delivery=cookie without the X-Tessera-CSRF header is 403 csrf_check_failed (a
# documented answer: the header is what a cross-site form cannot send).
[[operations]]
include-path = "/oauth/token"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "429"]

# RFC 9449 §5: a DPoP header that is not a proof signed for this request (any string
# the schema allows: a signature cannot be generated) is 400 invalid_dpop_proof, on
# revocation as on the token endpoint.
[[operations]]
include-path = "/oauth/revoke"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "429"]
TOML

status=0
# From the scratch folder, so schemathesis's cache stays out of the work tree.
cd "$work"
schemathesis --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
  --checks all \
  --max-examples "$examples" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --request-timeout 60 \
  --suppress-health-check all || status=$?
if ((status != 0)); then
  echo "--- server log (last 50 lines)"
  tail -n 50 "$work/server.log"
fi
exit "$status"
