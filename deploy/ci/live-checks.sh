#!/usr/bin/env bash
# Checks on the running services, with real NATS JetStream and Redis behind them:
# 1. schemathesis against ingest and the registry, using the OpenAPI documents they serve
#    on their admin ports; fails on any 5xx, schema violation, undocumented status or
#    wrong content type. The registry is tried with an API key, then its inbox and receipt
#    routes with a person's JWT (they refuse API keys);
# 2. a call pushed through every provider's dispatcher to the sandbox mocks, then
#    `promtool check metrics` on a live /metrics scrape of ingest, the registry, every dispatcher and the
#    gateway (after a WebSocket connection, so its in-app metrics have a series).
# Usage: deploy/ci/live-checks.sh [max examples per operation, default 40]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The providers' dispatchers, from providers/src/lib.rs.
# BEGIN rendered by deploy/k8s/render-dispatchers.py (dispatchers); do not edit
DISPATCHERS=(dispatcher-apns dispatcher-fcm dispatcher-webpush dispatcher-hms)
# END rendered (dispatchers)
PACKAGES=(); for d in "${DISPATCHERS[@]}"; do PACKAGES+=(-p "pushline-$d"); done
EXAMPLES=${1:-40}
export PATH="$PATH:/usr/sbin"
command -v schemathesis >/dev/null || { echo "schemathesis missing: pip install schemathesis"; exit 1; }

command -v promtool >/dev/null || { echo "promtool missing: apt-get install prometheus"; exit 1; }
cargo build --locked --quiet --manifest-path "$ROOT/Cargo.toml" -p pushline-ingest -p pushline-registry \
  "${PACKAGES[@]}" -p pushline-gateway -p pushline-tests --bins
BIN="$ROOT/target/debug"
WORK=$(mktemp -d -t pushline-st.XXXXXX)
PIDS=()
cleanup() {
  trap '' INT TERM
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS=$(port); REDIS=$(port); INGEST=$(port); INGEST_ADMIN=$(port); REGISTRY=$(port); REGISTRY_ADMIN=$(port)
OPEN=$(port); OPEN_ADMIN=$(port)
MOCK_CONTROL=$(port)
GATEWAY=$(port); GATEWAY_MQTT=$(port); GATEWAY_ADMIN=$(port)

nats-server -a 127.0.0.1 -p "$NATS" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 & PIDS+=($!)
redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 & PIDS+=($!)
# Every provider's sandbox mock, each on a free port; it writes each dispatcher's settings
# for its mock, and the origins the registry must accept, into $WORK/mock.
MOCK_PORTS=(); for d in "${DISPATCHERS[@]}"; do MOCK_PORTS+=(--port "${d#dispatcher-}=$(port)"); done
"$BIN/pushline-mock" --dir "$WORK/mock" "${MOCK_PORTS[@]}" --control-port "$MOCK_CONTROL" >"$WORK/mock.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do [ -f "$WORK/mock/private-origins.json" ] && break; sleep 0.1; done
[ -f "$WORK/mock/private-origins.json" ] || { echo "pushline-mock did not start"; cat "$WORK/mock.log"; exit 1; }

API_KEY=schemathesis-admin-key
JWT_SECRET=schemathesis-person-jwt-secret-32-bytes-long
# An HS256 JWT for person "ada", valid for an hour.
PERSON_JWT=$(python3 - "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "ada", "iss": "schemathesis", "aud": "pushline", "iat": now, "exp": now + 3600}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)
PRODUCER_KEY=schemathesis-producer-key
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat >"$WORK/ingest.toml" <<TOML
listen = "127.0.0.1:$INGEST"
admin_listen = "127.0.0.1:$INGEST_ADMIN"
[webex]
secrets = ["schemathesis-webhook-secret"]
[producers]
keys = [{ name = "schemathesis", sha256 = "$(sha $PRODUCER_KEY)", rate_per_sec = 100000.0, burst = 100000 }]
status_rate_per_sec = 100000.0
status_burst = 100000
[nats]
url = "nats://127.0.0.1:$NATS"
[telemetry]
filter = "warn"
TOML
cat >"$WORK/registry.toml" <<TOML
listen = "127.0.0.1:$REGISTRY"
admin_listen = "127.0.0.1:$REGISTRY_ADMIN"
[redis]
url = "redis://127.0.0.1:$REDIS"
[devices]
default_apns_app = "com.example.pushline"
default_fcm_app = "pushline-test"
key_encryption_keys = [{ id = "ci", key = "$(head -c 32 /dev/urandom | base64)" }]
[endpoints]
private_origins = $(cat "$WORK/mock/private-origins.json")
[devices.apps."com.example.pushline"]
inbox = true
[auth]
api_keys = [{ name = "schemathesis", sha256 = "$(sha $API_KEY)", scopes = ["admin"] }]
[auth.jwt]
keys = [{ algorithm = "HS256", secret = "$JWT_SECRET" }]
issuer = "schemathesis"
audience = "pushline"
[nats]
url = "nats://127.0.0.1:$NATS"
[telemetry]
filter = "warn"
TOML
# A second ingest with the development switch that skips signatures, so generated bodies
# reach envelope parsing (signature checking itself is covered by property tests).
sed -e "s/127.0.0.1:$INGEST\"/127.0.0.1:$OPEN\"/" -e "s/127.0.0.1:$INGEST_ADMIN/127.0.0.1:$OPEN_ADMIN/" \
  -e 's/^\[webex\]$/[webex]\ninsecure_skip_signature = true/' "$WORK/ingest.toml" >"$WORK/ingest-open.toml"
"$BIN/pushline-ingest" --config "$WORK/ingest.toml" >"$WORK/ingest.log" 2>&1 & PIDS+=($!)
"$BIN/pushline-ingest" --config "$WORK/ingest-open.toml" >"$WORK/ingest-open.log" 2>&1 & PIDS+=($!)
"$BIN/pushline-registry" --config "$WORK/registry.toml" >"$WORK/registry.log" 2>&1 & PIDS+=($!)
for admin in "$INGEST_ADMIN" "$OPEN_ADMIN" "$REGISTRY_ADMIN"; do
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" || { cat "$WORK"/*.log; exit 1; }
done

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
status=0
run() { # name schema-url api-url header [more schemathesis options]
  echo "== schemathesis: $1 (at most $EXAMPLES examples per operation)"
  schemathesis run "$2" --url "$3" --checks "$CHECKS" --max-examples "$EXAMPLES" \
    --header "$4" --seed 1 --no-color "${@:5}" || status=1
}
run registry "http://127.0.0.1:$REGISTRY_ADMIN/openapi.yaml" "http://127.0.0.1:$REGISTRY" "Authorization: Bearer $API_KEY"
run "registry (a person's inbox)" "http://127.0.0.1:$REGISTRY_ADMIN/openapi.yaml" "http://127.0.0.1:$REGISTRY" \
  "Authorization: Bearer $PERSON_JWT" --include-path-regex '^/v1/(inbox|receipts)'

run ingest "http://127.0.0.1:$INGEST_ADMIN/openapi.yaml" "http://127.0.0.1:$INGEST" "Authorization: Bearer $PRODUCER_KEY"
run "ingest (signatures skipped)" "http://127.0.0.1:$OPEN_ADMIN/openapi.yaml" "http://127.0.0.1:$OPEN" "Authorization: Bearer $PRODUCER_KEY"
echo "== a call through every dispatcher (${DISPATCHERS[*]}), then promtool check metrics on every service"
ADMINS=()
for d in "${DISPATCHERS[@]}"; do
  admin=$(port); ADMINS+=("$admin")
  { echo "admin_listen = \"127.0.0.1:$admin\""; cat "$WORK/mock/$d.toml"
    printf '[nats]\nurl = "nats://127.0.0.1:%s"\n[telemetry]\nfilter = "warn"\n' "$NATS"; } >"$WORK/$d.toml"
  "$BIN/pushline-$d" --config "$WORK/$d.toml" >"$WORK/$d.log" 2>&1 & PIDS+=($!)
done
cat >"$WORK/gateway.toml" <<TOML
listen = "127.0.0.1:$GATEWAY"
listen_mqtt = "127.0.0.1:$GATEWAY_MQTT"
admin_listen = "127.0.0.1:$GATEWAY_ADMIN"
apps = ["com.example.pushline"]
[redis]
url = "redis://127.0.0.1:$REDIS"
[auth.jwt]
issuer = "https://idp.pushline.local"
audience = "pushline"
keys = [{ algorithm = "HS256", secret = "$(head -c 32 /dev/urandom | base64)" }]
[nats]
url = "nats://127.0.0.1:$NATS"
[telemetry]
filter = "warn"
TOML
"$BIN/pushline-gateway" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 & PIDS+=($!)
for admin in "${ADMINS[@]}" "$GATEWAY_ADMIN"; do
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null && break; sleep 0.1; done
done
PERSON=live-check-person
# A device at each provider's mock.
for d in "${DISPATCHERS[@]}"; do
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:$REGISTRY/v1/devices" -H "authorization: Bearer $API_KEY" \
    -H 'content-type: application/json' \
    -d "$(curl -fsS -X POST "http://127.0.0.1:$MOCK_CONTROL/devices/${d#dispatcher-}?person=$PERSON")"
done
BODY="{\"resource\":\"telephony_push\",\"event\":\"updated\",\"actorId\":\"$PERSON\",\"data\":{\"apnsPayload\":{\"aps\":{}},\"fcmPayload\":{\"k\":\"v\"}}}"
SIG=$(printf %s "$BODY" | openssl dgst -sha1 -hmac schemathesis-webhook-secret | sed 's/^.*= //')
curl -fsS -X POST "http://127.0.0.1:$INGEST/webhooks/webex" -H 'content-type: application/json' -H "x-spark-signature: $SIG" -d "$BODY" >/dev/null
# The providers whose mock has accepted no push yet.
undelivered() {
  for d in "${DISPATCHERS[@]}"; do
    [ "$(curl -fsS "http://127.0.0.1:$MOCK_CONTROL/delivered/${d#dispatcher-}" || echo 0)" -ge 1 ] \
      || printf '%s ' "${d#dispatcher-}"
  done
}
for _ in $(seq 1 100); do
  [ -z "$(undelivered)" ] && break
  sleep 0.1
done
missing=$(undelivered)
[ -z "$missing" ] || { echo "the call reached no device at: $missing"; status=1; }
# A WebSocket upgrade the client then drops, so the gateway's in-app metrics have a series.
curl -sS -o /dev/null --http1.1 --max-time 1 "http://127.0.0.1:$GATEWAY/v1/connect" \
  -H 'connection: Upgrade' -H 'upgrade: websocket' -H 'sec-websocket-version: 13' \
  -H 'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==' 2>/dev/null || true
for admin in "$INGEST_ADMIN" "$REGISTRY_ADMIN" "${ADMINS[@]}" "$GATEWAY_ADMIN"; do
  if curl -fsS "http://127.0.0.1:$admin/metrics" | promtool check metrics; then
    echo "promtool check metrics 127.0.0.1:$admin: ok"
  else
    echo "promtool check metrics 127.0.0.1:$admin: FAILED"; status=1
  fi
done

if [ "$status" -ne 0 ]; then
  echo "== service logs"; tail -n 50 "$WORK"/*.log
fi
exit "$status"
