#!/usr/bin/env bash
# The ARM tier as CI runs it, before the main suite (see markdown_documentation/arm.md):
#   1. prepare the emulated linux/aarch64 environment (.ci/arm/setup.sh; cached outside the clone);
#   2. compute the x86 reference losses natively with the same code (python -m mgr.bench.armcheck);
#   3. run `pytest -m arm tests/arm` on aarch64 under qemu, comparing against that reference.
# Exits 0 with "ARM tier SKIPPED: <why>" only when the emulator cannot be installed; any other
# failure fails the tier. On a native aarch64 host it runs the tests natively instead.
#
# Knobs: MGR_ARM_CACHE (default $HOME/.cache/mgr-arm64), MGR_ARM_TIMEOUT (seconds for the
# emulated pytest, default 600: a guard against hangs, far above the measured run).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
export UV_PYTHON_DOWNLOADS=never
CACHE=${MGR_ARM_CACHE:-$HOME/.cache/mgr-arm64}
LIMIT=${MGR_ARM_TIMEOUT:-600}
PYTEST_ARGS=(-m arm tests/arm -p no:cacheprovider -p no:hypothesispytest -o addopts= -q -rs)
T0=$SECONDS
echo "== ARM tier (linux/aarch64, XLA CPU) =="

if [ "$(uname -m)" = aarch64 ]; then
  echo "native aarch64 host: running the ARM tests natively (no x86 reference: finite and falling)"
  uv run pytest "${PYTEST_ARGS[@]}"
  echo "ARM tier passed natively in $((SECONDS - T0)) s"
  exit 0
fi

# 1. setup; exit code 3 = no emulator, the only reason to skip
SETUP_LOG=$(mktemp)
trap 'rm -f "$SETUP_LOG"' EXIT
set +e
bash "$HERE/setup.sh" "$CACHE/sysroot" 2>&1 | tee "$SETUP_LOG"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 3 ]; then
  why=$(grep '^arm setup: ' "$SETUP_LOG" | tail -n 1 | sed 's/^arm setup: //')
  echo "ARM tier SKIPPED: ${why:-the aarch64 emulator (qemu-user-static) cannot be installed}"
  exit 0
fi
[ "$rc" = 0 ] || { echo "ARM tier FAILED: setup exited with $rc" >&2; exit "$rc"; }
T1=$SECONDS

# The recipe's measured flags: half the compile time, same numbers (to 1e-6). The x86 reference
# uses them too, so the comparison differs in the architecture alone.
export XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
WORK=$(mktemp -d)
trap 'rm -f "$SETUP_LOG"; rm -rf "$WORK"' EXIT

# 2. the x86 reference, natively, in this run
uv run python -m mgr.bench.armcheck --out "$WORK/x86.json" --cache-dir "$CACHE/jax-$(uname -m)"
T2=$SECONDS

# 3. the emulated aarch64 tests
: >"$WORK/results.txt"
set +e
MGR_ARM_SYSROOT="$CACHE/sysroot" MGR_ARM_TIER=1 MGR_ARM_REFERENCE="$WORK/x86.json" \
MGR_ARM_RESULTS="$WORK/results.txt" MGR_CACHE_DIR="$CACHE/mgr" \
JAX_COMPILATION_CACHE_DIR="$CACHE/jax-aarch64" \
  timeout -k 20 "$LIMIT" "$HERE/python" -m pytest "${PYTEST_ARGS[@]}"
rc=$?
set -e
T3=$SECONDS
cat "$WORK/results.txt"
echo "ARM tier times: setup $((T1 - T0)) s, x86 reference $((T2 - T1)) s, emulated tests $((T3 - T2)) s, total $((T3 - T0)) s"
case $rc in
  0) echo "ARM tier passed" ;;
  124|137) echo "ARM tier FAILED: the emulated tests ran past ${LIMIT} s" >&2 ;;
  *) echo "ARM tier FAILED (pytest exit $rc)" >&2 ;;
esac
exit "$rc"
