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
# No vacuous pass: every fault must show its effect, or the scenario FAILS.
#   memcached kill (both modes): load-verify's relocated>0 (sessions whose
#     node died were moved to another node), the surviving app's /stats
#     relocations>0, and the killed node (memcachedN = nN) missing from its
#     available_nodes.
#   app kill, sticky: moved>0 (the killed app's sessions were served by the
#     survivor) and the survivor's /stats takeovers>0.
#   app kill, round-robin (every session is served by both instances anyway,
#     so moved only proves the balancing): moved >= sessions - readers (every
#     busy session was shared through memcached, i.e. nginx really spread
#     it), and the survivor absorbed the killed app's share: its request
#     rate (/stats `loads`, one per request in non-sticky mode) in the 3.5 s
#     after the kill (+2 s) is >= CHAOS_MIN_RATE_GAIN x its rate in the 3.5 s
#     before the kill.
# The survivor's /stats is read with `docker exec <container> curl` (both
# app images have curl; the apps publish no port). The verdict line shows
# every figure used.
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
#   CHAOS_READERS      --readers: users that only read (default USERS/4)
#   CHAOS_READER_IDLE_MS  --reader-idle-ms: readers sleep this long between
#                      requests, so their sessions sit idle across each kill
#                      (default 4000; 0: the option is not passed)
#   CHAOS_KILL_MEMCACHED / CHAOS_KILL_MEMCACHED_AT   (memcached1 / 5 s)
#   CHAOS_KILL_APP / CHAOS_KILL_APP_AT               (app1 / 12 s)
#                      `none` disables that kill (the scenario must then
#                      FAIL its effect assertions: a check of the checks)
#   CHAOS_MIN_RATE_GAIN   round-robin: survivor's rate after / before the
#                      app kill must reach this (default 1.3)
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
READERS=${CHAOS_READERS:-$((USERS / 4))}
READER_IDLE_MS=${CHAOS_READER_IDLE_MS:-4000}
MIN_RATE_GAIN=${CHAOS_MIN_RATE_GAIN:-1.3}
RATE_WINDOW=3.5   # seconds; round-robin rate windows before/after the app kill
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

if [ "$KILL_APP_AT" -le "$KILL_MEMCACHED_AT" ] || [ "$DURATION" -lt $((KILL_APP_AT + 7)) ]; then
  echo "chaos: need CHAOS_KILL_MEMCACHED_AT < CHAOS_KILL_APP_AT <= CHAOS_DURATION - 7" >&2
  exit 2
fi
case "$KILL_MEMCACHED" in
  memcached[1-3]) KILLED_NODE=n${KILL_MEMCACHED#memcached} ;;
  none) KILLED_NODE="" ;;
  *) echo "chaos: CHAOS_KILL_MEMCACHED must be memcached1..3 or none" >&2; exit 2 ;;
esac
case "$KILL_APP" in
  app1|none) SURVIVOR=app2 ;;   # none: app2 is "the survivor" read for the checks
  app2) SURVIVOR=app1 ;;
  *) echo "chaos: CHAOS_KILL_APP must be app1, app2 or none" >&2; exit 2 ;;
esac

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

# The timeline step of one fault: on time, then the kill; `none` skips it
# (and says so) so the effect assertions can be shown to catch a fault that
# did nothing. Sets `reason` on failure.
fault() { # service container-id at variable
  if [ "$1" = none ]; then
    sleep_until "$3"
    echo "chaos: [$(elapsed) s] no kill ($4=none): no fault injected"
    return 0
  fi
  if ! on_time "$3"; then
    reason="the $1 kill could not happen on time"
    return 1
  elif ! kill_service "$1" "$2"; then
    reason="the $1 kill did not happen mid-run"
    return 1
  fi
}

# Reads GET /stats of an app from inside its container (the apps publish no
# port; both app images have curl) into $WORK/stats.<label>.json, and the
# load time of the read (middle of the docker exec) into ….t. Non-zero when
# it could not be read.
snap_stats() { # label container-id
  local out="$WORK/stats.$1" t0 t1
  t0=$(elapsed)
  if docker exec "$2" curl -fsS -m 5 http://127.0.0.1:8080/stats >"$out.json" 2>"$out.err"; then
    t1=$(elapsed)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (a + b) / 2 }' >"$out.t"
  else
    rm -f "$out.json"
    return 1
  fi
}

# A number from a flat JSON object (serde's compact output); empty if absent.
json_num() { # file key
  grep -oE "\"$2\":[0-9]+" "$1" 2>/dev/null | head -n 1 | cut -d: -f2
}

# `["n2","n3"]` -> `n2,n3`; empty if absent.
json_nodes() { # file
  grep -oE '"available_nodes":\[[^]]*\]' "$1" 2>/dev/null | head -n 1 \
    | sed -E 's/.*\[(.*)\]/\1/; s/"//g'
}

# A counter of load-verify's summary line; empty if absent.
summary_num() { # key
  grep -oE "(^| )$1=[0-9]+" <<<"$summary" | head -n 1 | cut -d= -f2
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

  local memcached_id="" app_id="" survivor_id
  [ "$KILL_MEMCACHED" != none ] && memcached_id=$(compose ps -q "$KILL_MEMCACHED" 2>/dev/null | head -n 1)
  [ "$KILL_APP" != none ] && app_id=$(compose ps -q "$KILL_APP" 2>/dev/null | head -n 1)
  survivor_id=$(compose ps -q "$SURVIVOR" 2>/dev/null | head -n 1)
  if { [ "$KILL_MEMCACHED" != none ] && [ -z "$memcached_id" ]; } \
    || { [ "$KILL_APP" != none ] && [ -z "$app_id" ]; } || [ -z "$survivor_id" ]; then
    say "FAIL ($name): no container for $KILL_MEMCACHED, $KILL_APP or $SURVIVOR"
    cleanup
    return 1
  fi
  rm -f "$WORK"/stats.*

  local args=(--target "$TARGET" --users "$USERS" --duration "$DURATION" --write-ratio "$WRITE_RATIO")
  [ -n "$DELAY_MS" ] && args+=(--delay-ms "$DELAY_MS")
  [ "$READERS" -gt 0 ] && args+=(--readers "$READERS")
  [ "$READERS" -gt 0 ] && [ "$READER_IDLE_MS" -gt 0 ] && args+=(--reader-idle-ms "$READER_IDLE_MS")
  say "load: $LOAD_VERIFY ${args[*]}"
  LOAD_START=$(date +%s.%N)
  "$LOAD_VERIFY" "${args[@]}" >"$WORK/load.out" 2>"$WORK/load.err" &
  LOAD_PID=$!

  # Round-robin: the survivor's /stats at both ends of a RATE_WINDOW before
  # the app kill (ending 0.5 s before it) and of one after it (starting 2 s
  # after it), in the background so a slow docker exec cannot delay a kill.
  local rr=""; [ "$name" = round-robin ] && rr=1
  local snaps=()
  if fault "$KILL_MEMCACHED" "$memcached_id" "$KILL_MEMCACHED_AT" CHAOS_KILL_MEMCACHED; then
    if [ -n "$rr" ]; then
      sleep_until "$(awk -v t="$KILL_APP_AT" -v w="$RATE_WINDOW" 'BEGIN { print t - 0.5 - w }')"
      snap_stats before0 "$survivor_id" & snaps+=($!)
      sleep_until "$(awk -v t="$KILL_APP_AT" 'BEGIN { print t - 0.5 }')"
      snap_stats before1 "$survivor_id" & snaps+=($!)
    fi
    if fault "$KILL_APP" "$app_id" "$KILL_APP_AT" CHAOS_KILL_APP && [ -n "$rr" ]; then
      sleep_until "$((KILL_APP_AT + 2))"
      snap_stats after0 "$survivor_id" & snaps+=($!)
      sleep_until "$(awk -v t="$KILL_APP_AT" -v w="$RATE_WINDOW" 'BEGIN { print t + 2 + w }')"
      snap_stats after1 "$survivor_id" & snaps+=($!)
    fi
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
  [ "${#snaps[@]}" -gt 0 ] && wait "${snaps[@]}"
  # The survivor's figures at the end, before teardown.
  snap_stats end "$survivor_id"

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
    elif grep -qE '(^| )(extra_updates|unverified|phantom_writes|server_errors)=[1-9]' <<<"$summary"; then
      # phantom_writes (a write answered "nothing saved" that was saved) and
      # server_errors (5xx other than 502/503/504): newer load-verify only.
      reason="the summary reports extra_updates, unverified sessions, phantom_writes or server_errors"
    elif grep -qE '(^| )ok=0( |$)' <<<"$summary"; then
      reason="no request succeeded"
    fi
  fi

  # --- no vacuous pass: each fault must have had its effect ---------------
  # Every failed assertion is listed; the figures go on the verdict line.
  local effects=() figures sessions moved relocated end="$WORK/stats.end.json"
  local relocations takeovers nodes mc_fault="the $KILL_MEMCACHED kill" app_fault="the $KILL_APP kill"
  [ "$KILL_MEMCACHED" = none ] && mc_fault="CHAOS_KILL_MEMCACHED=none"
  [ "$KILL_APP" = none ] && app_fault="CHAOS_KILL_APP=none"
  missing_effect() { effects+=("$1"); }
  sessions=$(summary_num sessions); moved=$(summary_num moved); relocated=$(summary_num relocated)
  figures="moved=${moved:-?} relocated=${relocated:-?}"
  local k v
  for k in phantom_writes server_errors; do   # newer load-verify; optional
    v=$(summary_num "$k"); [ -n "$v" ] && figures+=" $k=$v"
  done
  if [ -z "$summary" ]; then
    :   # no summary: already the reason
  elif [ -z "$moved" ] || [ -z "$relocated" ] || [ -z "$sessions" ]; then
    missing_effect "the summary lacks sessions/moved/relocated"
  fi
  if [ ! -s "$end" ]; then
    missing_effect "could not read $SURVIVOR's /stats ($(head -c 200 "$WORK/stats.end.err" 2>/dev/null))"
  else
    relocations=$(json_num "$end" relocations); takeovers=$(json_num "$end" takeovers)
    nodes=$(json_nodes "$end")
    figures+=" | $SURVIVOR /stats: relocations=${relocations:-?} takeovers=${takeovers:-?}"
    figures+=" backups_restored=$(json_num "$end" backups_restored) lock_failures=$(json_num "$end" lock_failures)"
    figures+=" available_nodes=[$nodes]"
  fi
  # memcached kill: sessions on the dead node were relocated.
  [ -n "$relocated" ] && [ "$relocated" -eq 0 ] \
    && missing_effect "relocated=0: no session was relocated after $mc_fault"
  if [ -s "$end" ]; then
    [ "${relocations:-0}" -eq 0 ] && missing_effect "$SURVIVOR relocations=0 after $mc_fault"
    if [ -n "$KILLED_NODE" ] && grep -qE "(^|,)$KILLED_NODE(,|$)" <<<"$nodes"; then
      missing_effect "$SURVIVOR still lists $KILLED_NODE ($KILL_MEMCACHED) as available"
    fi
  fi
  # app kill.
  if [ "$name" = sticky ]; then
    [ -n "$moved" ] && [ "$moved" -eq 0 ] \
      && missing_effect "moved=0: no session moved to $SURVIVOR after $app_fault"
    [ -s "$end" ] && [ "${takeovers:-0}" -eq 0 ] \
      && missing_effect "$SURVIVOR takeovers=0 after $app_fault"
  else
    if [ -n "$moved" ] && [ -n "$sessions" ]; then
      figures+=" | busy sessions=$((sessions - READERS))"
      [ "$moved" -lt $((sessions - READERS)) ] \
        && missing_effect "moved=$moved < $((sessions - READERS)) busy sessions: round-robin did not spread every session over both apps"
    fi
    local b0="$WORK/stats.before0" b1="$WORK/stats.before1" a0="$WORK/stats.after0" a1="$WORK/stats.after1" gain
    if [ -s "$b0.json" ] && [ -s "$b1.json" ] && [ -s "$a0.json" ] && [ -s "$a1.json" ]; then
      gain=$(awk -v lb0="$(json_num "$b0.json" loads)" -v lb1="$(json_num "$b1.json" loads)" \
                 -v la0="$(json_num "$a0.json" loads)" -v la1="$(json_num "$a1.json" loads)" \
                 -v tb0="$(cat "$b0.t")" -v tb1="$(cat "$b1.t")" -v ta0="$(cat "$a0.t")" -v ta1="$(cat "$a1.t")" \
        'BEGIN { rb = (lb1 - lb0) / (tb1 - tb0); ra = (la1 - la0) / (ta1 - ta0);
                 printf "%.0f/s before, %.0f/s after: x%.2f", rb, ra, (rb > 0 ? ra / rb : 0) }')
      figures+=" | $SURVIVOR requests $gain"
      if ! awk -v g="${gain##*x}" -v m="$MIN_RATE_GAIN" 'BEGIN { exit !(g >= m) }'; then
        missing_effect "$SURVIVOR's request rate did not grow by x$MIN_RATE_GAIN after $app_fault ($gain)"
      fi
    else
      missing_effect "the round-robin rate windows could not be measured (no kill, or $SURVIVOR's /stats unreadable)"
    fi
  fi
  if [ "${#effects[@]}" -gt 0 ]; then
    local joined
    joined=$(printf '%s; ' "${effects[@]}")
    reason="${reason:+$reason; }no effect shown: ${joined%; }"
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
    say "FAIL ($name): $reason [${took} s] ($figures)"
    return 1
  fi
  say "PASS ($name) [${took} s] $figures"
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
