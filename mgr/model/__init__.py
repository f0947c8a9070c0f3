"""The decoder (`Decoder`) and its residual blocks, built from the attention and ffn registries."""

from mgr.model.decoder import Decoder, Embedding, param_count, with_aux_gradient  # noqa: F401
