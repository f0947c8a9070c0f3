"""The attention algebras. Importing this package registers every algebra.

The list below *is* the list of algebras: one import per file, each file registering itself
with `@register`.
"""

from attention.registry import get, names, register  # noqa: F401
from attention.base import AttentionDims, AttentionEntry  # noqa: F401

from attention import standard  # noqa: F401,E402
