"""Test-wide settings: a persistent JAX compilation cache and a repo-local data cache.

Both live under the repo's ignored `.cache/`, so a second run (and CI on the same machine)
skips compilation and corpus/tokenizer builds.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MGR_CACHE_DIR", str(ROOT / ".cache" / "mgr"))

from mgr.runtime import enable_compilation_cache  # noqa: E402

enable_compilation_cache(ROOT / ".cache" / "jax-tests")
