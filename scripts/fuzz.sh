#!/usr/bin/env bash
# Fuzz smoke test: type-checks the manager's `fuzzing` feature, then runs
# every cargo-fuzz target of manager/fuzz for a short while (FUZZ_SECONDS
# each, default 15) from its seed corpus (manager/fuzz/seeds/<target>, when
# present) and exits non-zero if any target crashes (a panic, an abort, an
# out-of-memory or a timeout). Crash inputs are kept in
# manager/fuzz/artifacts/<target>/; reproduce one with
#   (cd manager && cargo +nightly fuzz run -a <target> fuzz/artifacts/<target>/<file>)
#
# Installs cargo-fuzz (from crates.io) when it is missing. cargo-fuzz needs
# a nightly compiler: the rustup `nightly` toolchain when installed, else the
# default toolchain with RUSTC_BOOTSTRAP=1 (unstable flags on a stable
# compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-15}

echo "== cargo check -p memcached-sessions --features fuzzing"
cargo check --locked -p memcached-sessions --features fuzzing

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=(+"$FUZZ_TOOLCHAIN")
elif command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  toolchain=()
fi
if [ ${#toolchain[@]} -eq 0 ] || [ "${toolchain[0]}" != "+nightly" ]; then
  if ! cargo "${toolchain[@]}" --version | grep -q nightly; then
    echo "== no nightly toolchain: using $(cargo "${toolchain[@]}" --version) with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
  fi
fi

cd manager
# Release build with debug assertions: integer overflow panics too.
fuzz=(cargo "${toolchain[@]}" fuzz)
echo "== building the fuzz targets"
"${fuzz[@]}" build --debug-assertions

corpus_root=$(mktemp -d)
trap 'rm -rf "$corpus_root"' EXIT
failed=()
for target in $("${fuzz[@]}" list); do
  echo "== fuzz ${target} (${FUZZ_SECONDS} s)"
  corpus="$corpus_root/$target"
  mkdir -p "$corpus"
  seeds=()
  if [ -d "fuzz/seeds/$target" ]; then
    seeds=("fuzz/seeds/$target")
  fi
  # The first corpus directory receives new inputs (a temporary one, so the
  # repository is not written to); the seeds are only read.
  if ! "${fuzz[@]}" run --debug-assertions "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    { grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' || true; }; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED (crash, or build error above): ${failed[*]}; crash inputs are in manager/fuzz/artifacts/"
  exit 1
fi
echo "fuzz.sh: every target ran ${FUZZ_SECONDS} s without a crash"
