"""Demos: each shows one algebra's or optimizer's mathematics at work, with live certificates.

The imports below are the list of demos; each module registers itself with `@demo`.
"""

from mgr.demos.base import DemoResult, check, demo, get, names, run_demo  # noqa: F401
