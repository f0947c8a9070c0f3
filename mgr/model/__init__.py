"""The decoder (`Decoder`) and its residual blocks, built from the attention registry."""

from mgr.model.decoder import Decoder, Embedding, param_count  # noqa: F401
