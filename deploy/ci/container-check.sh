#!/usr/bin/env bash
# The deployment we ship is the deployment we test: builds the pushline image from the
# release binaries of this checkout, brings up docker-compose.yml (NATS, Redis, the five
# pipeline services and the gateway, the sandbox mocks, Prometheus), sends a signed call
# webhook, and checks that a push reaches every provider's mock (iPhone, Android, browser,
# Huawei phone, …: the providers' list),
# that Prometheus scraped pushline_pushes_total, that the gateway answers a WebSocket
# upgrade, and that the services' health checks pass; then `down` must leave nothing behind.
#
# No image registry is reachable here, so the base images are made from Debian packages
# with mmdebstrap and `docker import`ed; docker-compose.yml takes them by variable. Nothing
# in the containers reaches beyond the network compose creates: ports are published on
# 127.0.0.1, and the images are built without network.
#
# Installs what it needs when missing (docker.io, docker-compose 1.29, mmdebstrap) and
# starts dockerd if no daemon answers (stopping it again at the end).
# Usage: deploy/ci/container-check.sh   (needs root for apt-get and dockerd)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The providers' dispatchers, from providers/src/lib.rs.
# BEGIN rendered by deploy/k8s/render-dispatchers.py (dispatchers); do not edit
DISPATCHERS=(dispatcher-apns dispatcher-fcm dispatcher-webpush dispatcher-hms)
# END rendered (dispatchers)
PACKAGES=(); for d in "${DISPATCHERS[@]}"; do PACKAGES+=(-p "pushline-$d" --bin "pushline-$d"); done
cd "$ROOT"
SUITE=bookworm
# The Debian mirror this machine's own apt uses (a source for $SUITE, else its first
# non-security Debian source; only sources with Debian's `main` component count, so a
# third-party repository such as Docker's is never taken), so the images come from
# wherever the machine may fetch packages; PUSHLINE_DEBIAN_MIRROR overrides it. No step
# may fail on a file with no source in it (sed and awk, never grep, under pipefail).
apt_mirror() {
  {
    # One-line sources: `deb [options] URI suite components…`.
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '
        $1 == "deb" { for (i = 4; i <= NF; i++) if ($i == "main") { print $2, $3; break } }'
    done
    # deb822 sources: stanzas of `Types:`, `URIs:`, `Suites:`, `Components:`.
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      sed -e '/^[[:space:]]*#/d' "$f" | awk -v RS= '
        /(^|\n)Types:[^\n]*deb([ \n]|$)/ {
          uri = ""; suites = ""; main = 0
          n = split($0, lines, "\n")
          for (i = 1; i <= n; i++) {
            if (lines[i] ~ /^URIs:/) { split(lines[i], u, " "); uri = u[2] }
            if (lines[i] ~ /^Suites:/) { suites = substr(lines[i], 8) }
            if (lines[i] ~ /^Components:/ && lines[i] ~ /[ \t]main([ \t]|$)/) { main = 1 }
          }
          m = split(suites, s, " ")
          for (i = 1; i <= m; i++) if (uri != "" && main) print uri, s[i]
        }'
    done
  } | awk -v suite="$SUITE" '
    # Read to the end (an early exit would break the pipe under pipefail).
    $2 == suite && !found { found = $1 }
    !first && $1 !~ /security/ && $2 !~ /security/ { first = $1 }
    END { if (found) print found; else if (first) print first }'
}
MIRROR=${PUSHLINE_DEBIAN_MIRROR:-$(apt_mirror)}
if [ -z "$MIRROR" ]; then
  echo "no Debian source in this machine's apt sources; set PUSHLINE_DEBIAN_MIRROR" >&2
  exit 1
fi
PROJECT=pushline-ci
API_KEY=local-api-key
SECRET=$(head -n 1 deploy/compose/webhook_secrets.txt | tr -d '\r\n')
say() { printf '== %s\n' "$*"; }
started=$(date +%s)

# --- tools --------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 \
  || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
# BuildKit (which skips the Dockerfile stages a build does not need) comes with buildx or,
# without it, with Debian's docker CLI talking to its own daemon.
DOCKER=docker
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi

WORK=$(mktemp -d -t pushline-containers.XXXXXX)
DOCKERD_PID=
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    say "failed; the stack's last logs:"
    "${COMPOSE[@]}" -p "$PROJECT" logs --no-color --tail 40 2>/dev/null || true
  fi
  "${COMPOSE[@]}" -p "$PROJECT" --profile sandbox down -v --remove-orphans >/dev/null 2>&1 || true
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null || true; wait "$DOCKERD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  dockerd >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { cat "$WORK/dockerd.log"; exit 1; }
fi
say "docker $(docker version --format '{{.Server.Version}}'), $("${COMPOSE[@]}" version | head -n 1)"

# --- images ---------------------------------------------------------------------------
image_missing() { ! docker image inspect "$1" >/dev/null 2>&1; }
if image_missing pushline-ci/base:$SUITE; then
  say "making the base image (mmdebstrap $SUITE minbase + ca-certificates)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates "$SUITE" "$WORK/base.tar" "$MIRROR"
  docker import "$WORK/base.tar" pushline-ci/base:$SUITE >/dev/null
fi
if image_missing pushline-ci/deps:$SUITE; then
  say "making the dependencies' image (Debian's nats-server, redis-server, prometheus)"
  mmdebstrap --quiet --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include=ca-certificates,wget,nats-server,redis-server,prometheus \
    --customize-hook='mkdir -p "$1/data" "$1/prometheus"' "$SUITE" "$WORK/deps.tar" "$MIRROR"
  docker import "$WORK/deps.tar" pushline-ci/deps:$SUITE >/dev/null
fi
# One image per dependency: only the entry point differs (no network needed).
printf 'FROM pushline-ci/deps:%s\nWORKDIR /data\nENTRYPOINT ["/usr/sbin/nats-server"]\n' "$SUITE" \
  | DOCKER_BUILDKIT=0 "$DOCKER" build -q -t pushline-ci/nats:$SUITE - >/dev/null
printf 'FROM pushline-ci/deps:%s\nWORKDIR /data\n' "$SUITE" \
  | DOCKER_BUILDKIT=0 "$DOCKER" build -q -t pushline-ci/redis:$SUITE - >/dev/null
printf 'FROM pushline-ci/deps:%s\nWORKDIR /prometheus\nENTRYPOINT ["/usr/bin/prometheus"]\nCMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]\n' "$SUITE" \
  | DOCKER_BUILDKIT=0 "$DOCKER" build -q -t pushline-ci/prometheus:$SUITE - >/dev/null

say "building the release binaries and the pushline image from them"
cargo build --release --locked \
  -p pushline-ingest -p pushline-registry -p pushline-gateway -p pushline-tests --bin pushline-ingest \
  --bin pushline-registry --bin pushctl --bin pushline-gateway --bin pushline-mock "${PACKAGES[@]}"
DOCKER_BUILDKIT=1 "$DOCKER" build --quiet -f deploy/Dockerfile \
  --build-arg BINARIES=prebuilt --build-arg RUNTIME_BASE=pushline-ci/base:$SUITE \
  -t pushline:ci . >/dev/null
# The binaries run on the base (glibc, certificates), as the image's user, without network.
docker run --rm --network none pushline:ci \
  sh -c 'id -u && pushline-ingest --print-config >/dev/null && pushline-gateway --print-config >/dev/null' \
  | grep -qx 10001

# --- the stack ------------------------------------------------------------------------
export PUSHLINE_IMAGE=pushline:ci
export PUSHLINE_NATS_IMAGE=pushline-ci/nats:$SUITE
export PUSHLINE_REDIS_IMAGE=pushline-ci/redis:$SUITE
export PUSHLINE_PROMETHEUS_IMAGE=pushline-ci/prometheus:$SUITE
SERVICES=(nats redis mock ingest registry "${DISPATCHERS[@]}" gateway prometheus)
say "docker-compose.yml up: ${SERVICES[*]}"
"${COMPOSE[@]}" -p "$PROJECT" --profile sandbox up -d --no-build "${SERVICES[@]}"

health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$("${COMPOSE[@]}" -p "$PROJECT" ps -q "$1")"; }
for service in ingest registry "${DISPATCHERS[@]}" gateway mock; do
  for _ in $(seq 1 120); do [ "$(health "$service")" = healthy ] && break; sleep 0.5; done
  state=$(health "$service")
  echo "  $service: $state"
  [ "$state" = healthy ] || exit 1
done

say "a signed call webhook through the containers"
# A Webex person id: base64 of ciscospark://us/PEOPLE/<uuid> (the registry refuses others).
PERSON=Y2lzY29zcGFyazovL3VzL1BFT1BMRS83ZDBlNGI1Mi0xYzlhLTRmM2UtYTZkOC0yYjVjOWUxZjBhNDc
# A device at each provider's mock (the mock makes it and says how to register it).
for d in "${DISPATCHERS[@]}"; do
  curl -fsS -o /dev/null -X POST http://127.0.0.1:8081/v1/devices -H "authorization: Bearer $API_KEY" \
    -H 'content-type: application/json' \
    -d "$(curl -fsS -X POST "http://127.0.0.1:8445/devices/${d#dispatcher-}?person=$PERSON")"
done
BODY="{\"resource\":\"telephony_push\",\"event\":\"updated\",\"actorId\":\"$PERSON\",\"data\":{\"apnsPayload\":{\"aps\":{},\"callId\":\"container-call\"},\"fcmPayload\":{\"type\":\"incoming_call\",\"callId\":\"container-call\"}}}"
SIG=$(printf %s "$BODY" | openssl dgst -sha1 -hmac "$SECRET" | sed 's/^.*= //')
curl -fsS -X POST http://127.0.0.1:8080/webhooks/webex -H 'content-type: application/json' \
  -H "x-spark-signature: $SIG" -d "$BODY"
echo
# The providers that accepted a push (status 200), one name a line.
accepted() { python3 -c 'import json, sys
print("\n".join(sorted({r["provider"] for r in json.load(sys.stdin) if r["status"] == 200})))'; }
missing=("${DISPATCHERS[@]}")
for _ in $(seq 1 100); do
  requests=$(curl -fsS http://127.0.0.1:8445/requests || echo '[]')
  got=$(printf %s "$requests" | accepted || true)
  missing=()
  for d in "${DISPATCHERS[@]}"; do
    printf '%s\n' "$got" | grep -qx "${d#dispatcher-}" || missing+=("${d#dispatcher-}")
  done
  [ "${#missing[@]}" -eq 0 ] && break
  sleep 0.2
done
echo "  providers that accepted a push: $(printf '%s ' $got)"
[ "${#missing[@]}" -eq 0 ] || { echo "no push reached: ${missing[*]}"; exit 1; }
printf %s "$requests" | grep -q "container-call" || { echo "the call's payload did not arrive"; exit 1; }

say "the gateway answers a WebSocket upgrade on 8884"
# The handshake only: the connection then waits for a hello, which --max-time cuts short.
upgrade=$(curl -sS -i -N --http1.1 --max-time 2 http://127.0.0.1:8884/v1/connect \
  -H 'connection: Upgrade' -H 'upgrade: websocket' -H 'sec-websocket-version: 13' \
  -H 'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==' 2>/dev/null || true)
printf %s "$upgrade" | head -n 1 | sed 's/^/  /'
printf %s "$upgrade" | head -n 1 | grep -q ' 101 ' || { echo "no WebSocket upgrade from the gateway"; exit 1; }

say "Prometheus scrapes pushline_pushes_total"
query='sum(pushline_pushes_total{outcome="delivered"})'
scraped=0
for _ in $(seq 1 60); do
  scraped=$(curl -fsS -G http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$query" \
    | sed -n 's/.*"value":\[[^,]*,"\([0-9.]*\)"\].*/\1/p' || true)
  [ "${scraped%.*}" -ge "${#DISPATCHERS[@]}" ] 2>/dev/null && break
  sleep 1
done
echo "  $query = ${scraped:-none}"
[ "${scraped%.*}" -ge "${#DISPATCHERS[@]}" ] 2>/dev/null || exit 1
curl -fsS http://127.0.0.1:9090/api/v1/targets | grep -o '"health":"[a-z]*"' | sort | uniq -c

say "down leaves nothing behind"
"${COMPOSE[@]}" -p "$PROJECT" --profile sandbox down -v --remove-orphans
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"; \
  docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"; \
  docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
if [ -n "$left" ]; then echo "left behind: $left"; exit 1; fi
echo "  no containers, networks or volumes of $PROJECT remain"
say "container check passed in $(( $(date +%s) - started )) s"
