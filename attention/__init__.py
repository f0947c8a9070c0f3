"""The attention algebras. Importing this package registers every algebra.

The list below *is* the list of algebras: one import per file, each file registering itself
with `@register`.
"""

from attention.registry import get, names, register  # noqa: F401
from attention.base import AttentionDims, AttentionEntry  # noqa: F401

from attention import standard  # noqa: F401,E402
from attention import tropical  # noqa: F401,E402
from attention import ultrametric  # noqa: F401,E402
from attention import simplicial  # noqa: F401,E402
from attention import quaternion  # noqa: F401,E402
from attention import octonion  # noqa: F401,E402
from attention import braid  # noqa: F401,E402
from attention import fractal  # noqa: F401,E402
from attention import surreal  # noqa: F401,E402
from attention import reversible  # noqa: F401,E402
from attention import gauge  # noqa: F401,E402
from attention import ssm  # noqa: F401,E402
