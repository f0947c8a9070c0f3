"""Process setup and files: compilation cache, multi-host join, provenance (`env`), cache
directories and atomic writes (`paths`), run records (`artifacts`), run ids and run-directory
locks (`runs`). Imports nothing above it."""

from mgr.runtime.env import (command_line, device_info, enable_compilation_cache, git_info,  # noqa: F401
                             maybe_init_distributed, request_devices, versions)
