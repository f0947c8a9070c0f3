"""Probe tasks: synthetic, seeded, offline token tasks on which sequence mixers differ sharply.

The list below *is* the list of tasks: one import per file, each registering itself.
"""

from mgr.bench.probes.base import IGNORE, ProbeData, ProbeSet, TaskConfig, TaskEntry  # noqa: F401
from mgr.bench.probes.registry import get, names, register  # noqa: F401
from mgr.bench.probes import mqar  # noqa: F401,E402
from mgr.bench.probes import selective_copy  # noqa: F401,E402
from mgr.bench.probes import noisy_recall  # noqa: F401,E402
from mgr.bench.probes import length_generalization  # noqa: F401,E402
from mgr.bench.probes import state_tracking  # noqa: F401,E402
from mgr.bench.probes import hierarchical_recall  # noqa: F401,E402
from mgr.bench.probes import forgetting  # noqa: F401,E402
from mgr.bench.probes import triples  # noqa: F401,E402
