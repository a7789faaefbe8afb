#!/usr/bin/env bash
# Builds every image the compose cluster needs from this machine alone, for
# hosts with a Docker engine but no container registry (this project's
# machines and CI):
#
#   msm-local/debian-base:12  Debian 12 (bookworm) rootfs made by debootstrap
#                             --variant=minbase from Debian's package mirror
#                             (memcached, nginx, curl, ca-certificates
#                             included), then `docker import`ed.
#   msm-local/memcached:1.6   FROM the base: memcached as user memcache.
#   msm-local/nginx:local     FROM the base: nginx in the foreground.
#   msm-local/demo-app:local  FROM the base: COPY of the host-built
#                             target/release/demo-app (Debian 12 host, so the
#                             same glibc as the image).
#
# The three small images are built with Dockerfiles that only COPY / set
# metadata: `docker build` needs no network. Idempotent: debootstrap is
# skipped when the base image already exists (MSM_REBUILD_BASE=1 or
# --rebuild-base forces it); the small images are rebuilt every time (seconds,
# layer cache), so a fresh demo-app binary is always picked up.
#
# Environment:
#   DEBIAN_MIRROR      mirror URL (default: the one apt on this host uses)
#   MSM_REBUILD_BASE   1: redo the debootstrap base even if it exists
#   MSM_SKIP_CARGO     1: do not run `cargo build --release -p demo-app`
#                      (target/release/demo-app must then exist)
#   MSM_WORK_DIR       where the rootfs is made (default: a mktemp -d under
#                      /var/tmp); removed afterwards
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SUITE=bookworm
BASE_IMAGE=msm-local/debian-base:12
MEMCACHED_IMAGE=msm-local/memcached:1.6
NGINX_IMAGE=msm-local/nginx:local
APP_IMAGE=msm-local/demo-app:local
PACKAGES=memcached,nginx,curl,ca-certificates

rebuild_base=${MSM_REBUILD_BASE:-0}
for arg in "$@"; do
  case "$arg" in
    --rebuild-base) rebuild_base=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "build-local-images: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "== build-local-images: $*"; }
die() { echo "build-local-images: ERROR: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker daemon answers"

# The Debian mirror apt on this host uses: the first non-security URI of a
# source for $SUITE, from one-line (.list) or deb822 (.sources) files.
detect_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  awk -v suite="$SUITE" '
    function flush() {
      if (uris != "" && suites ~ ("(^| )" suite "( |$)")) {
        n = split(uris, u, " ")
        for (i = 1; i <= n; i++) if (u[i] !~ /security/) { print u[i]; found = 1; exit }
      }
      uris = ""; suites = ""
    }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[[:space:]]*$/) { flush(); next }
      if ($1 == "URIs:")   { $1 = ""; uris = $0 }
      if ($1 == "Suites:") { $1 = ""; suites = $0 }
      next
    }
    FNR == 1 { flush() }
    /^[[:space:]]*deb[[:space:]]/ {
      i = 2
      if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == suite && $i !~ /security/) { print $i; found = 1; exit }
    }
    END { if (!found) flush() }
  ' "${files[@]}" | head -n 1
}

build_base() {
  local mirror work started
  mirror=${DEBIAN_MIRROR:-$(detect_mirror)}
  mirror=${mirror:-http://deb.debian.org/debian}
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (Debian package)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
  fi
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root (run as root or with sudo)"
  work=${MSM_WORK_DIR:-$(mktemp -d /var/tmp/msm-rootfs.XXXXXX)}
  mkdir -p "$work"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  started=$(date +%s)
  log "debootstrap --variant=minbase $SUITE from $mirror (packages: $PACKAGES)"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" \
      >"$work/debootstrap.log" 2>&1; then
    tail -n 40 "$work/debootstrap.log" >&2
    [ -f "$work/rootfs/debootstrap/debootstrap.log" ] && tail -n 40 "$work/rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  # Slim it down: package caches, lists, docs, man pages, locales.
  local r="$work/rootfs"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
         "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/log/*.log \
         "$r"/debootstrap
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
  # The containers' /etc/hosts, /etc/resolv.conf and /etc/hostname come from Docker.
  : >"$r/etc/resolv.conf"
  log "docker import -> $BASE_IMAGE"
  tar --numeric-owner -C "$r" -c . | docker import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE $mirror" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
  log "base image built in $(( $(date +%s) - started )) s"
}

if [ "$rebuild_base" = 1 ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  build_base
else
  log "$BASE_IMAGE exists: debootstrap skipped (MSM_REBUILD_BASE=1 to redo it)"
fi

if [ "${MSM_SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --release -p demo-app"
  (cd "$ROOT" && cargo build --release --locked -p demo-app)
fi
BIN="$ROOT/target/release/demo-app"
[ -x "$BIN" ] || die "$BIN is missing (cargo build --release -p demo-app)"

# Small build contexts: only the Dockerfile (and the binary for demo-app), so
# nothing of the workspace is sent to the daemon.
ctx=$(mktemp -d /tmp/msm-ctx.XXXXXX)
# shellcheck disable=SC2064
trap "rm -rf '$ctx' '$ctx.out'" EXIT
build_small() { # image dockerfile [file to copy into the context]
  local image=$1 dockerfile=$2 extra=${3:-}
  rm -rf "${ctx:?}"/*
  cp "$HERE/local/$dockerfile" "$ctx/Dockerfile"
  [ -n "$extra" ] && cp "$extra" "$ctx/"
  local previous
  previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  log "docker build -> $image"
  # The legacy builder (no buildx here) prints a deprecation notice on
  # stderr: shown only when the build fails.
  if ! docker build -q --build-arg "BASE=$BASE_IMAGE" -t "$image" "$ctx" >"$ctx.out" 2>&1; then
    cat "$ctx.out" >&2
    die "docker build of $image failed"
  fi
  # Drop the image this tag pointed to before, if nothing else uses it.
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
}
build_small "$MEMCACHED_IMAGE" Dockerfile.memcached
build_small "$NGINX_IMAGE" Dockerfile.nginx
build_small "$APP_IMAGE" Dockerfile.demo-app "$BIN"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^msm-local/' | sed 's/^/   /'
log "done"
