"""The feed-forward kinds of the decoder's blocks. Importing this package registers every kind.

The list below *is* the list of kinds: one import per file, each registering itself with
`@register`. A layer's kind is chosen by `ModelConfig.ffn` (tiled over layers like `attention`).
"""

from ffn.registry import DEFAULT, get, names, register  # noqa: F401
from ffn.base import FeedForward, FFNConfig, FFNEntry  # noqa: F401

from ffn import relu2  # noqa: F401,E402
from ffn import swiglu  # noqa: F401,E402
from ffn import moe  # noqa: F401,E402
