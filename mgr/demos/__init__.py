"""Demos: each shows one algebra's or optimizer's mathematics at work, with live certificates.

The imports below are the list of demos; each module registers itself with `@demo`.
"""

from mgr.demos.base import DemoResult, check, demo, get, names, run_demo  # noqa: F401
from mgr.demos import standard  # noqa: F401,E402
from mgr.demos import quaternion  # noqa: F401,E402
from mgr.demos import octonion  # noqa: F401,E402
from mgr.demos import simplicial  # noqa: F401,E402
from mgr.demos import reversible  # noqa: F401,E402
from mgr.demos import surreal  # noqa: F401,E402
from mgr.demos import braid  # noqa: F401,E402
from mgr.demos import fractal  # noqa: F401,E402
from mgr.demos import muon  # noqa: F401,E402
from mgr.demos import hoss  # noqa: F401,E402
from mgr.demos import ordinal  # noqa: F401,E402
from mgr.demos import gauge  # noqa: F401,E402
from mgr.demos import tropical  # noqa: F401,E402
from mgr.demos import ultrametric  # noqa: F401,E402
