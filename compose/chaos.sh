#!/usr/bin/env bash
# Compose chaos test: brings the cluster up (3 memcached, app1 + app2, nginx),
# runs load-verify on the host against nginx's loopback port, kills a
# memcached node and then an app instance mid-run (SIGKILL, as `compose kill`),
# and fails unless nothing was lost.
#
#   compose/chaos.sh [sticky|round-robin|all]      (default: all)
#
# Scenarios:
#   sticky       nginx/sticky.conf (cookie route), STICKY=true,
#                SESSION_BACKUP_ASYNC=false, LOCKING_MODE=none
#   round-robin  nginx/round-robin.conf, STICKY=false, LOCKING_MODE=all
#
# Why SESSION_BACKUP_ASYNC=false for sticky: in sticky mode the only
# up-to-date copy of a session is in the app process; memcached holds its
# backup. With async backups the response leaves before the backup is
# written, so an instance killed in that window (normally a few ms, up to
# operationTimeout while a memcached node hangs) takes acknowledged increments
# with it, and the instance that takes the session over finds an older copy:
# a lost update by design, not a bug. Synchronous backups close that window
# (the response waits for the write, up to sessionBackupTimeout).
#
# Honest by construction: a scenario that cannot start (images, cluster,
# health, port) FAILS; nothing is retried; a load run that ended before a
# kill FAILS; the verdict is load-verify's exit status plus its counters.
#
# Environment (all optional):
#   MSM_LOCAL_IMAGES   1: images built here (build-local-images.sh +
#                      docker-compose.local.yml); 0: public images and the
#                      multi-stage Dockerfile (needs a registry);
#                      unset: 1 unless memcached:1.6 and nginx:stable are
#                      already present locally
#   MSM_SKIP_CARGO     1: do not run cargo (binaries must exist)
#   LOAD_VERIFY        load tool to run (default target/release/load-verify,
#                      built by `cargo build --release -p chaos`)
#   CHAOS_PORT         host port of nginx on 127.0.0.1 (default 18088)
#   CHAOS_USERS        virtual users (default 32)
#   CHAOS_DURATION     load duration in seconds (default 25)
#   CHAOS_WRITE_RATIO  share of increments (default 0.5)
#   CHAOS_DELAY_MS     --delay-ms for load-verify (default: none)
#   CHAOS_KILL_MEMCACHED / CHAOS_KILL_MEMCACHED_AT   (memcached1 / 5 s)
#   CHAOS_KILL_APP / CHAOS_KILL_APP_AT               (app1 / 12 s)
#   CHAOS_HEALTH_TIMEOUT  seconds to wait for the cluster (default 90)
#   COMPOSE            compose command (default: `docker compose` if it
#                      works, else `docker-compose`)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

USERS=${CHAOS_USERS:-32}
DURATION=${CHAOS_DURATION:-25}
WRITE_RATIO=${CHAOS_WRITE_RATIO:-0.5}
DELAY_MS=${CHAOS_DELAY_MS:-}
KILL_MEMCACHED=${CHAOS_KILL_MEMCACHED:-memcached1}
KILL_MEMCACHED_AT=${CHAOS_KILL_MEMCACHED_AT:-5}
KILL_APP=${CHAOS_KILL_APP:-app1}
KILL_APP_AT=${CHAOS_KILL_APP_AT:-12}
HEALTH_TIMEOUT=${CHAOS_HEALTH_TIMEOUT:-90}
PORT=${CHAOS_PORT:-18088}
ADDR=127.0.0.1:$PORT
TARGET=http://$ADDR

say() { echo "chaos: $*"; }

case "${1:-all}" in
  sticky|round-robin) SCENARIOS=("$1") ;;
  all) SCENARIOS=(sticky round-robin) ;;
  -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
  *) echo "usage: $0 [sticky|round-robin|all]" >&2; exit 2 ;;
esac

if [ "$KILL_APP_AT" -le "$KILL_MEMCACHED_AT" ] || [ "$DURATION" -le "$KILL_APP_AT" ]; then
  echo "chaos: need CHAOS_KILL_MEMCACHED_AT < CHAOS_KILL_APP_AT < CHAOS_DURATION" >&2
  exit 2
fi

# --- tools ------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  say "FAIL: no Docker daemon answers"
  exit 1
fi
if [ -n "${COMPOSE:-}" ]; then
  read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  say "FAIL: neither 'docker compose' nor 'docker-compose' is installed"
  exit 1
fi

if [ -z "${MSM_LOCAL_IMAGES:-}" ]; then
  if docker image inspect memcached:1.6 >/dev/null 2>&1 && docker image inspect nginx:stable >/dev/null 2>&1; then
    MSM_LOCAL_IMAGES=0
  else
    MSM_LOCAL_IMAGES=1
  fi
fi
FILES=(-f "$HERE/docker-compose.yml")
if [ "$MSM_LOCAL_IMAGES" = 1 ]; then
  FILES+=(-f "$HERE/docker-compose.local.yml")
  UP_ARGS=(up -d --no-build)
  say "images: local (build-local-images.sh, docker-compose.local.yml)"
else
  UP_ARGS=(up -d --build)
  say "images: public + multi-stage Dockerfile (registry needed)"
fi
say "compose: ${COMPOSE_CMD[*]}"

# --- host binaries and images -------------------------------------------------
t0=$(date +%s)
if [ -n "${LOAD_VERIFY:-}" ]; then
  CARGO_PACKAGES=(-p demo-app)   # a given load tool: only the app is built
else
  LOAD_VERIFY=$ROOT/target/release/load-verify
  CARGO_PACKAGES=(-p demo-app -p chaos)
fi
if [ "${MSM_SKIP_CARGO:-0}" != 1 ]; then
  say "cargo build --release --locked ${CARGO_PACKAGES[*]}"
  if ! (cd "$ROOT" && cargo build --release --locked "${CARGO_PACKAGES[@]}"); then
    say "FAIL: cargo build failed"
    exit 1
  fi
fi
if [ ! -x "$LOAD_VERIFY" ]; then
  say "FAIL: load tool $LOAD_VERIFY is missing"
  exit 1
fi
if [ "$MSM_LOCAL_IMAGES" = 1 ]; then
  if ! MSM_SKIP_CARGO=1 bash "$HERE/build-local-images.sh"; then
    say "FAIL: building the local images failed"
    exit 1
  fi
fi
say "build step took $(( $(date +%s) - t0 )) s"

# --- one scenario ---------------------------------------------------------------
PROJECT=""
LOAD_PID=""
WORK=$(mktemp -d /tmp/msm-chaos.XXXXXX)

compose() { "${COMPOSE_CMD[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }

cleanup() {
  if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill "$LOAD_PID" 2>/dev/null
    wait "$LOAD_PID" 2>/dev/null
  fi
  LOAD_PID=""
  if [ -n "$PROJECT" ]; then
    compose down -v --remove-orphans --timeout 5 >"$WORK/down.log" 2>&1 \
      || { echo "chaos: warning: compose down failed:"; cat "$WORK/down.log"; }
    PROJECT=""
  fi
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# Seconds since the load started, one decimal.
elapsed() { awk -v s="$LOAD_START" -v n="$(date +%s.%N)" 'BEGIN { printf "%5.1f", n - s }'; }

sleep_until() { # seconds after LOAD_START
  local left
  left=$(awk -v s="$LOAD_START" -v n="$(date +%s.%N)" -v t="$1" 'BEGIN { d = s + t - n; printf "%.2f", (d > 0 ? d : 0) }')
  sleep "$left"
}

# Kills one service's container mid-run: SIGKILL, what `compose kill` does,
# but sent with `docker kill` to the container id looked up before the load
# started, so the kill lands when planned (docker-compose v1 is a Python
# program that takes seconds to start on a loaded 2-core machine). Prints the
# timeline line. Non-zero when the load was not running both before and
# after the kill (the kill would prove nothing) or the container still runs.
kill_service() { # service container-id
  local service=$1 id=$2 before after
  if ! kill -0 "$LOAD_PID" 2>/dev/null; then
    echo "chaos: [$(elapsed) s] load-verify already ended before killing $service"
    return 1
  fi
  before=$(elapsed)
  if ! docker kill --signal KILL "$id" >"$WORK/kill.log" 2>&1 \
    || [ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" != false ]; then
    echo "chaos: [$(elapsed) s] could not kill $service:"
    cat "$WORK/kill.log"
    return 1
  fi
  after=$(elapsed)
  echo "chaos: [$before s] killed $service (SIGKILL, container ${id:0:12}; gone at $after s)"
  if ! kill -0 "$LOAD_PID" 2>/dev/null; then
    echo "chaos: [$(elapsed) s] load-verify ended before the $service kill took effect"
    return 1
  fi
}

# Sleeps until $1 s after the load started; fails when that moment is more
# than 2 s gone already (the timeline slipped: the kill would be late).
on_time() {
  local late
  late=$(awk -v s="$LOAD_START" -v n="$(date +%s.%N)" -v t="$1" 'BEGIN { print (n - s - t > 2) ? 1 : 0 }')
  if [ "$late" = 1 ]; then
    echo "chaos: [$(elapsed) s] the timeline slipped: planned at $1 s"
    return 1
  fi
  sleep_until "$1"
}

run_scenario() {
  local name=$1 started reason="" rc summary
  started=$(date +%s)
  case "$name" in
    sticky)
      export NGINX_CONF=sticky STICKY=true SESSION_BACKUP_ASYNC=false LOCKING_MODE=none ;;
    round-robin)
      export NGINX_CONF=round-robin STICKY=false SESSION_BACKUP_ASYNC=false LOCKING_MODE=all ;;
  esac
  export NGINX_PUBLISH=$ADDR
  echo
  say "=== scenario $name: NGINX_CONF=$NGINX_CONF STICKY=$STICKY" \
      "SESSION_BACKUP_ASYNC=$SESSION_BACKUP_ASYNC LOCKING_MODE=$LOCKING_MODE"

  if port_in_use; then
    say "FAIL ($name): $ADDR is already in use (set CHAOS_PORT)"
    return 1
  fi

  PROJECT="msm-chaos-${name}-$$"
  say "compose project $PROJECT: ${UP_ARGS[*]}"
  if ! compose "${UP_ARGS[@]}" >"$WORK/up.log" 2>&1; then
    cat "$WORK/up.log"
    compose ps 2>&1
    compose logs --no-color --tail=30 2>&1
    say "FAIL ($name): the cluster did not start"
    cleanup
    return 1
  fi

  # Ready = /health answered 200 through nginx by both instances. Bounded,
  # and not a retry of anything: a cluster that is not ready in time FAILS.
  local deadline seen1="" seen2="" instance
  deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    instance=$(curl -fsS -m 2 -D - -o /dev/null "$TARGET/health" 2>/dev/null \
      | tr -d '\r' | awk -F': ' 'tolower($1) == "x-instance" { print $2 }')
    [ "$instance" = app1 ] && seen1=1
    [ "$instance" = app2 ] && seen2=1
    [ -n "$seen1" ] && [ -n "$seen2" ] && break
    sleep 0.2
  done
  if [ -z "$seen1" ] || [ -z "$seen2" ]; then
    compose ps 2>&1
    compose logs --no-color --tail=30 2>&1
    say "FAIL ($name): app1 and app2 did not both answer /health through nginx within ${HEALTH_TIMEOUT} s"
    cleanup
    return 1
  fi
  say "cluster ready in $(( $(date +%s) - started )) s (app1 and app2 answer through nginx at $TARGET)"

  local memcached_id app_id
  memcached_id=$(compose ps -q "$KILL_MEMCACHED" 2>/dev/null | head -n 1)
  app_id=$(compose ps -q "$KILL_APP" 2>/dev/null | head -n 1)
  if [ -z "$memcached_id" ] || [ -z "$app_id" ]; then
    say "FAIL ($name): no container for $KILL_MEMCACHED or $KILL_APP"
    cleanup
    return 1
  fi

  local args=(--target "$TARGET" --users "$USERS" --duration "$DURATION" --write-ratio "$WRITE_RATIO")
  [ -n "$DELAY_MS" ] && args+=(--delay-ms "$DELAY_MS")
  say "load: $LOAD_VERIFY ${args[*]}"
  LOAD_START=$(date +%s.%N)
  "$LOAD_VERIFY" "${args[@]}" >"$WORK/load.out" 2>"$WORK/load.err" &
  LOAD_PID=$!

  if ! on_time "$KILL_MEMCACHED_AT"; then
    reason="the $KILL_MEMCACHED kill could not happen on time"
  elif ! kill_service "$KILL_MEMCACHED" "$memcached_id"; then
    reason="the $KILL_MEMCACHED kill did not happen mid-run"
  elif ! on_time "$KILL_APP_AT"; then
    reason="the $KILL_APP kill could not happen on time"
  elif ! kill_service "$KILL_APP" "$app_id"; then
    reason="the $KILL_APP kill did not happen mid-run"
  fi

  # Bounded wait for the load tool: its duration plus a minute.
  local wait_deadline
  wait_deadline=$(( ${LOAD_START%.*} + DURATION + 60 ))
  while kill -0 "$LOAD_PID" 2>/dev/null && [ "$(date +%s)" -lt "$wait_deadline" ]; do
    sleep 0.5
  done
  if kill -0 "$LOAD_PID" 2>/dev/null; then
    kill "$LOAD_PID" 2>/dev/null
    reason=${reason:-"load-verify did not finish within $((DURATION + 60)) s"}
  fi
  wait "$LOAD_PID"
  rc=$?
  LOAD_PID=""
  echo "chaos: [$(elapsed) s] load-verify exited with status $rc"

  summary=$(grep -E '^sessions=' "$WORK/load.out" | tail -n 1)
  if [ -n "$summary" ]; then
    echo "$summary"
  else
    echo "chaos: load-verify printed no summary line; its output:"
    cat "$WORK/load.out"
  fi
  if [ -s "$WORK/load.err" ]; then
    echo "chaos: load-verify stderr (last 20 lines):"
    tail -n 20 "$WORK/load.err" | sed 's/^/  /'
  fi

  if [ -z "$reason" ]; then
    if [ -z "$summary" ]; then
      reason="no summary line from load-verify"
    elif [ "$rc" -ne 0 ]; then
      reason="load-verify exited $rc (something was lost)"
    elif ! grep -qE '(^| )lost_sessions=0( |$)' <<<"$summary" \
      || ! grep -qE '(^| )lost_updates=0( |$)' <<<"$summary"; then
      reason="the summary reports losses (or lacks lost_sessions/lost_updates)"
    elif grep -qE '(^| )(extra_updates|unverified)=[1-9]' <<<"$summary"; then
      reason="the summary reports extra_updates or unverified sessions"
    elif grep -qE '(^| )ok=0( |$)' <<<"$summary"; then
      reason="no request succeeded"
    fi
  fi

  say "containers after the run:"
  compose ps 2>&1 | sed 's/^/  /'
  if [ -n "$reason" ]; then
    say "container logs (last 20 lines each):"
    compose logs --no-color --tail=20 2>&1 | sed 's/^/  /'
  fi
  cleanup
  local took=$(( $(date +%s) - started ))
  if [ -n "$reason" ]; then
    say "FAIL ($name): $reason [${took} s]"
    return 1
  fi
  say "PASS ($name) [${took} s]"
  return 0
}

passed=0
failed=0
for scenario in "${SCENARIOS[@]}"; do
  if run_scenario "$scenario"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo
if [ "$failed" -eq 0 ]; then
  say "PASS ($passed of ${#SCENARIOS[@]} scenarios: ${SCENARIOS[*]})"
  exit 0
fi
say "FAIL ($failed of ${#SCENARIOS[@]} scenarios failed)"
exit 1
