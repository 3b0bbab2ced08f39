#!/usr/bin/env bash
# Runs pushline locally: NATS JetStream, Redis and the services, with a development
# configuration; registers sample devices, sends a signed sample call webhook and shows
# what came out. Runs until ctrl-c, then stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NATS_PORT=${PUSHLINE_LOCAL_NATS_PORT:-14222}
NATS_MONITOR=${PUSHLINE_LOCAL_NATS_MONITOR:-18222}
REDIS_PORT=${PUSHLINE_LOCAL_REDIS_PORT:-16379}
INGEST=127.0.0.1:8080
INGEST_ADMIN=127.0.0.1:9080
REGISTRY=127.0.0.1:8081
REGISTRY_ADMIN=127.0.0.1:9081
SECRET=local-webhook-secret
API_KEY=local-api-key
PERSON=Y2lzY29zcGFyazovL3VzL1BFT1BMRS9sb2NhbC1kZW1v

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }

# --- 1. what the machine needs -------------------------------------------------------
missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"

say "building release binaries"
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" \
  -p pushline-ingest -p pushline-registry
BIN="$ROOT/target/release"

# --- 2. start everything, stop it all on exit ----------------------------------------
WORK=$(mktemp -d -t pushline-local.XXXXXX)
PIDS=()
cleanup() {
  say "stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

wait_http() { # url, what
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; its log:"; cat "$WORK/$3.log"; exit 1
}

say "starting NATS JetStream on :$NATS_PORT (monitoring :$NATS_MONITOR) and Redis on :$REDIS_PORT"
start nats nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR" -js -sd "$WORK/nats"
start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK"
wait_http "http://127.0.0.1:$NATS_MONITOR/healthz" "nats-server" nats

KEY_HASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)
cat >"$WORK/ingest.toml" <<TOML
listen = "$INGEST"
admin_listen = "$INGEST_ADMIN"
[webex]
secrets = ["$SECRET"]
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[telemetry]
format = "pretty"
TOML
cat >"$WORK/registry.toml" <<TOML
listen = "$REGISTRY"
admin_listen = "$REGISTRY_ADMIN"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
[devices]
default_apns_app = "com.example.pushline"
default_fcm_app = "pushline-local"
default_environment = "sandbox"
[auth]
api_keys = [{ name = "local", sha256 = "$KEY_HASH" }]
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[telemetry]
format = "pretty"
TOML

say "starting ingest on $INGEST and registry on $REGISTRY"
start ingest "$BIN/pushline-ingest" --config "$WORK/ingest.toml"
start registry "$BIN/pushline-registry" --config "$WORK/registry.toml"
wait_http "http://$INGEST_ADMIN/readyz" "ingest" ingest
wait_http "http://$REGISTRY_ADMIN/readyz" "registry" registry

# --- 3. a sample call ------------------------------------------------------------------
VOIP_TOKEN=$(printf 'ab%.0s' $(seq 1 32))
FCM_TOKEN="fcm-local-demo:APA91bHPRgkFLJu6ck_q"
say "registering a sample iOS VoIP device and a sample Android device for the demo person"
curl -fsS -X POST "http://$REGISTRY/register" -H "authorization: Bearer $API_KEY" \
  -H 'content-type: application/json' \
  -d "{\"email\":\"demo@example.com\",\"voipToken\":\"$VOIP_TOKEN\",\"personId\":\"$PERSON\",\"fcmToken\":\"$FCM_TOKEN\"}"
echo

BODY="{\"resource\":\"telephony_push\",\"event\":\"updated\",\"actorId\":\"$PERSON\",\"data\":{\"apnsPayload\":{\"aps\":{},\"callId\":\"local-demo-call\",\"caller\":\"Ada\"},\"fcmPayload\":{\"type\":\"incoming_call\",\"callId\":\"local-demo-call\",\"caller\":\"Ada\"}}}"
SIG=$(printf %s "$BODY" | openssl dgst -sha1 -hmac "$SECRET" | sed 's/^.*= //')
say "sending a signed telephony_push webhook"
curl -fsS -X POST "http://$INGEST/webhooks/webex" -H 'content-type: application/json' \
  -H "x-spark-signature: $SIG" -d "$BODY"
echo

say "waiting for the registry to fan the call out into push jobs"
JOBS=0
for _ in $(seq 1 50); do
  JOBS=$(curl -fsS "http://127.0.0.1:$NATS_MONITOR/jsz" | grep -m1 '"messages"' | tr -dc 0-9 || true)
  [ "${JOBS:-0}" -ge 2 ] && break
  sleep 0.1
done
echo "  messages now stored in JetStream (push jobs for the two devices): ${JOBS:-0}"
curl -fsS "http://$REGISTRY_ADMIN/metrics" | grep '^pushline_fanout_jobs_total' || true

cat <<INFO

pushline is running. Metrics: http://$INGEST_ADMIN/metrics  http://$REGISTRY_ADMIN/metrics
Device API: http://$REGISTRY (Bearer $API_KEY)   Webhooks: http://$INGEST/webhooks/webex (secret $SECRET)
NATS monitoring: http://127.0.0.1:$NATS_MONITOR/jsz?streams=true
Logs follow; ctrl-c stops everything.

INFO
tail -n +1 -f "$WORK/ingest.log" "$WORK/registry.log" &
PIDS+=($!)
wait
