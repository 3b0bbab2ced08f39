#!/usr/bin/env bash
# Runs schemathesis against ingest and the registry, each with real NATS JetStream and
# Redis behind it, using the OpenAPI documents the services serve on their admin ports.
# Fails on any 5xx, schema violation, undocumented status or wrong content type.
# Usage: deploy/ci/schemathesis.sh [max examples per operation, default 40]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EXAMPLES=${1:-40}
export PATH="$PATH:/usr/sbin"
command -v schemathesis >/dev/null || { echo "schemathesis missing: pip install schemathesis"; exit 1; }

cargo build --locked --quiet --manifest-path "$ROOT/Cargo.toml" -p pushline-ingest -p pushline-registry
BIN="$ROOT/target/debug"
WORK=$(mktemp -d -t pushline-st.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS=$(port); REDIS=$(port); INGEST=$(port); INGEST_ADMIN=$(port); REGISTRY=$(port); REGISTRY_ADMIN=$(port)
OPEN=$(port); OPEN_ADMIN=$(port)

nats-server -a 127.0.0.1 -p "$NATS" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 & PIDS+=($!)
redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 & PIDS+=($!)

API_KEY=schemathesis-admin-key
PRODUCER_KEY=schemathesis-producer-key
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat >"$WORK/ingest.toml" <<TOML
listen = "127.0.0.1:$INGEST"
admin_listen = "127.0.0.1:$INGEST_ADMIN"
[webex]
secrets = ["schemathesis-webhook-secret"]
[producers]
keys = [{ name = "schemathesis", sha256 = "$(sha $PRODUCER_KEY)", rate_per_sec = 100000.0, burst = 100000 }]
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
default_fcm_app = "pushline-schemathesis"
[auth]
api_keys = [{ name = "schemathesis", sha256 = "$(sha $API_KEY)", scopes = ["admin"] }]
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
run() { # name schema-url api-url header
  echo "== schemathesis: $1 (at most $EXAMPLES examples per operation)"
  schemathesis run "$2" --url "$3" --checks "$CHECKS" --max-examples "$EXAMPLES" \
    --header "$4" --seed 1 --no-color || status=1
}
run registry "http://127.0.0.1:$REGISTRY_ADMIN/openapi.yaml" "http://127.0.0.1:$REGISTRY" "Authorization: Bearer $API_KEY"
run ingest "http://127.0.0.1:$INGEST_ADMIN/openapi.yaml" "http://127.0.0.1:$INGEST" "Authorization: Bearer $PRODUCER_KEY"
run "ingest (signatures skipped)" "http://127.0.0.1:$OPEN_ADMIN/openapi.yaml" "http://127.0.0.1:$OPEN" "Authorization: Bearer $PRODUCER_KEY"
if [ "$status" -ne 0 ]; then
  echo "== service logs"; tail -n 50 "$WORK/ingest.log" "$WORK/ingest-open.log" "$WORK/registry.log"
fi
exit "$status"
