#!/usr/bin/env bash
# Runs pushline locally: NATS JetStream, Redis, every provider's sandbox mock (APNs, FCM,
# a Web Push service, …: `pushline-mock`), ingest, the registry, every provider's
# dispatcher and the in-app gateway with a development configuration; registers a sample
# device at each provider (an iPhone's VoIP token, an Android phone, a browser's
# subscription, …), sends a signed sample call webhook and shows a push arriving at each
# provider's mock (the web push decrypted, as the browser reads it); then registers the sample person's app for in-app
# messages, connects a sample WebSocket client (Python's websockets, Debian's
# python3-websockets) with the person's development JWT, sends a /v1/notify with an
# `inapp` part and shows the message arriving and kept in the person's inbox (the sample
# app keeps one); prints the address of the sample web app (the gateway serves it, signed
# in as the demo person). Runs until ctrl-c, then stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The providers' dispatchers, from providers/src/lib.rs.
# BEGIN rendered by deploy/k8s/render-dispatchers.py (dispatchers); do not edit
DISPATCHERS=(dispatcher-apns dispatcher-fcm dispatcher-webpush dispatcher-hms)
DISPATCHER_ADMIN_PORTS=(9082 9083 9084 9086)
# END rendered (dispatchers)
PACKAGES=(); for d in "${DISPATCHERS[@]}"; do PACKAGES+=(-p "pushline-$d"); done
NATS_PORT=${PUSHLINE_LOCAL_NATS_PORT:-14222}
NATS_MONITOR=${PUSHLINE_LOCAL_NATS_MONITOR:-18222}
REDIS_PORT=${PUSHLINE_LOCAL_REDIS_PORT:-16379}
INGEST=127.0.0.1:8080
INGEST_ADMIN=127.0.0.1:9080
REGISTRY=127.0.0.1:8081
REGISTRY_ADMIN=127.0.0.1:9081
GATEWAY=127.0.0.1:8884
GATEWAY_MQTT=127.0.0.1:8883
GATEWAY_ADMIN=127.0.0.1:9085
# Each provider's mock listens on its sandbox port (8443, 8444, 8446, …) plus this offset.
MOCK_PORT_OFFSET=${PUSHLINE_LOCAL_MOCK_PORT_OFFSET:-10000}
MOCK_CONTROL_PORT=${PUSHLINE_LOCAL_MOCK_CONTROL_PORT:-18445}
# The sandbox's apps (what the mocks accept).
BUNDLE=com.example.pushline
PROJECT=pushline-test
WEB_APP=web.pushline-test
SECRET=local-webhook-secret
API_KEY=local-api-key
PRODUCER_KEY=local-producer-key
# The demo person: a Webex person id (base64 of ciscospark://us/PEOPLE/<uuid>), as Webex
# sends it; the registry keys persons by the uuid, which the person's JWT names.
PERSON_UUID=3f2c6a1e-8d4b-4c7a-9e51-6b0d2f7a9c13
PERSON=Y2lzY29zcGFyazovL3VzL1BFT1BMRS8zZjJjNmExZS04ZDRiLTRjN2EtOWU1MS02YjBkMmY3YTljMTM
# Persons' JWTs (HS256, development only): the registry and the gateway take them.
JWT_SECRET=local-person-jwt-secret-development-only
JWT_ISSUER=https://idp.pushline.local
JWT_AUDIENCE=pushline
# The sample app's installation id: its in-app token and its device id.
INAPP_DEVICE=8c1e6f2a-3b7d-4e0a-9f55-2a6c1d7e9b10
# The sample WebSocket client runs on Debian's Python, where python3-websockets goes.
PY=/usr/bin/python3

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }

# --- 1. what the machine needs -------------------------------------------------------
missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
"$PY" -c 'import websockets' >/dev/null 2>&1 || missing+=(python3-websockets)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"

say "building release binaries"
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" \
  -p pushline-ingest -p pushline-registry "${PACKAGES[@]}" -p pushline-gateway -p pushline-tests --bins
BIN="$ROOT/target/release"

# --- 2. start everything, stop it all on exit ----------------------------------------
WORK=$(mktemp -d -t pushline-local.XXXXXX)
PIDS=()
cleanup() {
  trap '' INT TERM # a second ctrl-c must not cut the clean-up short
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

say "starting every provider's sandbox mock (control :$MOCK_CONTROL_PORT)"
start mock "$BIN/pushline-mock" --dir "$WORK/mock" --port-offset "$MOCK_PORT_OFFSET" \
  --control-port "$MOCK_CONTROL_PORT"
wait_http "http://127.0.0.1:$MOCK_CONTROL_PORT/requests" "pushline-mock" mock
head -n 1 "$WORK/mock.log" | sed 's/^/    /'

KEY_HASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)
PRODUCER_HASH=$(printf %s "$PRODUCER_KEY" | sha256sum | cut -d' ' -f1)
cat >"$WORK/ingest.toml" <<TOML
listen = "$INGEST"
admin_listen = "$INGEST_ADMIN"
[webex]
secrets = ["$SECRET"]
[[producers.keys]]
name = "local"
sha256 = "$PRODUCER_HASH"
rate_per_sec = 100.0
burst = 100
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[telemetry]
format = "pretty"
TOML
cat >"$WORK/registry.toml" <<TOML
listen = "$REGISTRY"
admin_listen = "$REGISTRY_ADMIN"
# The sample web app, served by the gateway, calls the device and inbox APIs from its page.
cors_origins = ["http://$GATEWAY", "http://localhost:${GATEWAY##*:}"]
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
[devices]
default_apns_app = "$BUNDLE"
default_fcm_app = "$PROJECT"
default_apps = { webpush = "$WEB_APP" }
default_environment = "sandbox"
[devices.apps."$BUNDLE"]
inbox = true
[endpoints]
# The sandbox push service's origin (pushline-mock wrote it).
private_origins = $(cat "$WORK/mock/private-origins.json")
[auth]
api_keys = [{ name = "local", sha256 = "$KEY_HASH" }]
[auth.jwt]
issuer = "$JWT_ISSUER"
audience = "$JWT_AUDIENCE"
keys = [{ algorithm = "HS256", secret = "$JWT_SECRET" }]
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[telemetry]
format = "pretty"
TOML
cat >"$WORK/gateway.toml" <<TOML
listen = "$GATEWAY"
listen_mqtt = "$GATEWAY_MQTT"
admin_listen = "$GATEWAY_ADMIN"
apps = ["$BUNDLE"]
# The registry keeps the sample app's inbox (its [devices.apps] policy): its connections may read it.
inbox_apps = ["$BUNDLE"]
# Development only: the WebSocket listener also serves the sample web app.
sample_app = true
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
[auth.jwt]
issuer = "$JWT_ISSUER"
audience = "$JWT_AUDIENCE"
keys = [{ algorithm = "HS256", secret = "$JWT_SECRET" }]
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[telemetry]
format = "pretty"
TOML

# Each dispatcher: its admin port, its provider's part as pushline-mock wrote it (pointed at
# the mock), and NATS.
for i in "${!DISPATCHERS[@]}"; do
  d=${DISPATCHERS[$i]}
  { echo "admin_listen = \"127.0.0.1:${DISPATCHER_ADMIN_PORTS[$i]}\""; cat "$WORK/mock/$d.toml"
    printf '[nats]\nurl = "nats://127.0.0.1:%s"\n[telemetry]\nformat = "pretty"\n' "$NATS_PORT"; } >"$WORK/$d.toml"
done

say "starting ingest ($INGEST), registry ($REGISTRY), ${DISPATCHERS[*]} and the gateway ($GATEWAY)"
start ingest "$BIN/pushline-ingest" --config "$WORK/ingest.toml"
start registry "$BIN/pushline-registry" --config "$WORK/registry.toml"
for d in "${DISPATCHERS[@]}"; do
  start "$d" "$BIN/pushline-$d" --config "$WORK/$d.toml"
done
start gateway "$BIN/pushline-gateway" --config "$WORK/gateway.toml"
wait_http "http://$INGEST_ADMIN/readyz" "ingest" ingest
wait_http "http://$REGISTRY_ADMIN/readyz" "registry" registry
for i in "${!DISPATCHERS[@]}"; do
  wait_http "http://127.0.0.1:${DISPATCHER_ADMIN_PORTS[$i]}/readyz" "${DISPATCHERS[$i]}" "${DISPATCHERS[$i]}"
done
wait_http "http://$GATEWAY_ADMIN/readyz" "gateway" gateway

# --- 3. a sample call ------------------------------------------------------------------
say "registering a sample device for the demo person at each sandbox provider (an iPhone's VoIP token, an Android phone, a browser's subscription, …)"
for d in "${DISPATCHERS[@]}"; do
  DEVICE=$(curl -fsS -X POST "http://127.0.0.1:$MOCK_CONTROL_PORT/devices/${d#dispatcher-}?person=$PERSON")
  curl -fsS -o /dev/null -X POST "http://$REGISTRY/v1/devices" -H "authorization: Bearer $API_KEY" \
    -H 'content-type: application/json' -d "$DEVICE"
  echo "    ${d#dispatcher-}: $(printf %s "$DEVICE" | cut -c1-150)"
done

BODY="{\"resource\":\"telephony_push\",\"event\":\"updated\",\"actorId\":\"$PERSON\",\"data\":{\"apnsPayload\":{\"aps\":{},\"callId\":\"local-demo-call\",\"caller\":\"Ada\"},\"fcmPayload\":{\"type\":\"incoming_call\",\"callId\":\"local-demo-call\",\"caller\":\"Ada\"}}}"
SIG=$(printf %s "$BODY" | openssl dgst -sha1 -hmac "$SECRET" | sed 's/^.*= //')
say "sending a signed telephony_push webhook"
curl -fsS -X POST "http://$INGEST/webhooks/webex" -H 'content-type: application/json' \
  -H "x-spark-signature: $SIG" -d "$BODY"
echo

# How many pushes provider $1's mock accepted.
delivered() { curl -fsS "http://127.0.0.1:$MOCK_CONTROL_PORT/delivered/$1" 2>/dev/null || echo 0; }
# The providers whose mock has accepted no push yet.
undelivered() {
  for d in "${DISPATCHERS[@]}"; do
    [ "$(delivered "${d#dispatcher-}")" -ge 1 ] || printf '%s ' "${d#dispatcher-}"
  done
}
say "waiting for a push to reach each of the ${#DISPATCHERS[@]} sandbox providers"
for _ in $(seq 1 100); do
  [ -z "$(undelivered)" ] && break
  sleep 0.1
done
echo "  what the sandbox providers received:"
tail -n +2 "$WORK/mock.log" | sed 's/^/    /' || true
MISSING=$(undelivered)
if [ -z "$MISSING" ]; then
  say "all ${#DISPATCHERS[@]} pushes delivered, one at each provider: ${DISPATCHERS[*]#dispatcher-}"
else
  say "no push arrived at: $MISSING; see the logs below"
fi
for port in "${DISPATCHER_ADMIN_PORTS[@]}"; do
  curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^pushline_(pushes_total|end_to_end_seconds_count)' | sed 's/^/    /' || true
done

# --- 4. a sample in-app message ----------------------------------------------------------
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
NOW=$(date +%s)
JWT_HEAD=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
# Valid for 12 hours: the sample web app's address carries it.
JWT_BODY=$(printf '{"sub":"%s","iss":"%s","aud":"%s","iat":%d,"exp":%d}' \
  "$PERSON_UUID" "$JWT_ISSUER" "$JWT_AUDIENCE" "$NOW" $((NOW + 12 * 3600)) | b64url)
JWT_SIG=$(printf %s "$JWT_HEAD.$JWT_BODY" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)
PERSON_JWT="$JWT_HEAD.$JWT_BODY.$JWT_SIG"
say "registering the sample app for in-app messages, with the person's development JWT"
curl -fsS -o /dev/null -X PUT "http://$REGISTRY/v1/devices/$INAPP_DEVICE" \
  -H "authorization: Bearer $PERSON_JWT" -H 'content-type: application/json' \
  -d "{\"person_id\":\"$PERSON_UUID\",\"platform\":\"inapp\",\"app\":\"$BUNDLE\",\"device_id\":\"$INAPP_DEVICE\"}"

# The sample app's side of docs/inapp.md: hello, then print every frame and ack messages.
cat >"$WORK/inapp-client.py" <<'PYTHON'
import asyncio, json, os, sys
import websockets

async def main(url, app, device):
    async with websockets.connect(url, max_size=64 * 1024) as ws:
        await ws.send(json.dumps({"type": "hello", "credential": os.environ["INAPP_CREDENTIAL"],
                                  "app": app, "device_id": device}))
        try:
            async for text in ws:
                frame = json.loads(text)
                print(json.dumps(frame), flush=True)
                if frame.get("type") == "message":
                    await ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
        except websockets.ConnectionClosed as closed:
            print(f"closed: {closed}", flush=True)

asyncio.run(main(*sys.argv[1:4]))
PYTHON
say "connecting a sample app to the gateway: ws://$GATEWAY/v1/connect"
INAPP_CREDENTIAL="$PERSON_JWT" "$PY" "$WORK/inapp-client.py" \
  "ws://$GATEWAY/v1/connect" "$BUNDLE" "$INAPP_DEVICE" >"$WORK/inapp-client.log" 2>&1 &
CLIENT_PID=$!
PIDS+=("$CLIENT_PID")
for _ in $(seq 1 100); do grep -qs '"type": "ready"' "$WORK/inapp-client.log" && break; sleep 0.1; done
sed 's/^/    app: /' "$WORK/inapp-client.log"
say "sending an in-app message with POST /v1/notify"
curl -fsS -X POST "http://$INGEST/v1/notify" -H "authorization: Bearer $PRODUCER_KEY" \
  -H 'content-type: application/json' \
  -d "{\"person_ids\":[\"$PERSON_UUID\"],\"class\":\"alert\",\"ttl_secs\":300,\"idempotency_key\":\"local-demo-inapp-$NOW\",\"inapp\":{\"payload\":{\"title\":\"Your order shipped\",\"body\":\"Arrives Tuesday\"},\"category\":\"prompt\",\"actions\":[{\"id\":\"track\",\"title\":\"Track it\"},{\"id\":\"dismiss\",\"title\":\"Dismiss\"}]}}"
echo
for _ in $(seq 1 100); do grep -qs '"type": "message"' "$WORK/inapp-client.log" && break; sleep 0.1; done
if grep -q '"type": "message"' "$WORK/inapp-client.log"; then
  grep '"type": "message"' "$WORK/inapp-client.log" | sed 's/^/    app: /'
  say "the in-app message reached the connected app (and was acknowledged)"
else
  say "the in-app message did not arrive; the client's and the gateway's logs:"
  cat "$WORK/inapp-client.log"; tail -n 20 "$WORK/gateway.log"
fi
curl -fsS "http://$GATEWAY_ADMIN/metrics" | grep -E '^pushline_inapp_(connections|messages_total)' | sed 's/^/    /' || true

# --- 5. the app goes away: the push goes instead -----------------------------------------
# The same installation's Android push token (its device id ties it to the in-app one):
# while the app is connected its pushes wait behind the in-app message; once it is gone
# they go at once, and the in-app message waits for the app's return.
APP_FCM_TOKEN="fcm-local-demo-app:APA91bHPRgkFLJu6ck_q"
curl -fsS -o /dev/null -X PUT "http://$REGISTRY/v1/devices/$APP_FCM_TOKEN" \
  -H "authorization: Bearer $PERSON_JWT" -H 'content-type: application/json' \
  -d "{\"person_id\":\"$PERSON_UUID\",\"platform\":\"fcm\",\"app\":\"$PROJECT\",\"device_id\":\"$INAPP_DEVICE\"}"
say "the sample app disconnects; another message, with an in-app part and an Android push"
kill "$CLIENT_PID" 2>/dev/null || true
wait "$CLIENT_PID" 2>/dev/null || true
for _ in $(seq 1 100); do
  curl -fsS "http://$GATEWAY_ADMIN/metrics" | grep -q '^pushline_inapp_connections{.*} 0$' && break
  sleep 0.1
done
BEFORE=$(delivered fcm)
curl -fsS -X POST "http://$INGEST/v1/notify" -H "authorization: Bearer $PRODUCER_KEY" \
  -H 'content-type: application/json' \
  -d "{\"person_ids\":[\"$PERSON_UUID\"],\"class\":\"alert\",\"ttl_secs\":300,\"idempotency_key\":\"local-demo-away-$NOW\",\"inapp\":{\"payload\":{\"title\":\"While you were away\"}},\"fcm\":{\"data\":{\"title\":\"While you were away\"}}}"
echo
for _ in $(seq 1 100); do
  AFTER=$(delivered fcm)
  [ "$AFTER" -gt "$BEFORE" ] && break
  sleep 0.1
done
if [ "${AFTER:-0}" -gt "$BEFORE" ]; then
  say "the app was not connected: the Android push went at once (the in-app message waits in INAPP for the app)"
else
  say "no push arrived for the disconnected app; see the logs below"
fi

# --- 6. the inbox, and the sample web app --------------------------------------------------
INBOX=$(curl -fsS "http://$REGISTRY/v1/inbox/$BUNDLE?limit=5" -H "authorization: Bearer $PERSON_JWT" || true)
if [ -n "$INBOX" ]; then
  say "the person's inbox of $BUNDLE (GET /v1/inbox/$BUNDLE): the messages are kept, unread"
  echo "    $INBOX"
else
  say "the person's inbox could not be read; see the registry's log below"
fi
# The page's Web Push key: the Web Push dispatcher's VAPID public key (base64url, uncompressed point).
VAPID=$(openssl ec -in "$WORK/mock/vapid.pem" -pubout -outform DER 2>/dev/null | tail -c 65 | b64url)
SAMPLE_APP="http://$GATEWAY/sample-app?registry=http://$REGISTRY&app=$BUNDLE&vapid=$VAPID&webpush_app=$WEB_APP&autostart=1&token=$PERSON_JWT"
say "the sample web app: open this address in a browser, it signs in as the demo person and shows the inbox"
echo "    $SAMPLE_APP"

cat <<INFO

pushline is running. Metrics: http://$INGEST_ADMIN/metrics  http://$REGISTRY_ADMIN/metrics
  http://$GATEWAY_ADMIN/metrics, and each dispatcher's on 127.0.0.1:${DISPATCHER_ADMIN_PORTS[*]}
Pushes the sandbox providers received: http://127.0.0.1:$MOCK_CONTROL_PORT/requests
Device API: http://$REGISTRY (Bearer $API_KEY)   Webhooks: http://$INGEST/webhooks/webex (secret $SECRET)
Producer API: http://$INGEST/v1/notify (Bearer $PRODUCER_KEY)   In-app: ws://$GATEWAY/v1/connect, mqtt://$GATEWAY_MQTT
Sample web app: $SAMPLE_APP
NATS monitoring: http://127.0.0.1:$NATS_MONITOR/jsz?streams=true
Logs follow; ctrl-c stops everything.

INFO
LOGS=(); for d in "${DISPATCHERS[@]}"; do LOGS+=("$WORK/$d.log"); done
tail -n 0 -f "$WORK/ingest.log" "$WORK/registry.log" "${LOGS[@]}" \
  "$WORK/gateway.log" "$WORK/inapp-client.log" "$WORK/mock.log" &
PIDS+=($!)
wait
