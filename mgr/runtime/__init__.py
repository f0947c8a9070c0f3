"""Process setup and files: compilation cache, multi-host join, provenance (`env`), cache
directories and atomic writes (`paths`), run records (`artifacts`), run ids and run-directory
locks (`runs`). Imports nothing above it.

The names re-exported from `env` are resolved on first use (PEP 562): `env` imports JAX, and
`mgr.runtime.paths` (atomic writes, the cache directory) must stay cheap for code that never
touches a device, such as the tokenizer or `mgr data prepare`.
"""

from __future__ import annotations

_ENV = ("command_line", "device_info", "enable_compilation_cache", "git_info",
        "maybe_init_distributed", "request_devices", "versions")
__all__ = list(_ENV)


def __getattr__(name: str):
    if name in _ENV:
        from mgr.runtime import env

        return getattr(env, name)
    raise AttributeError(f"module 'mgr.runtime' has no attribute '{name}'")
