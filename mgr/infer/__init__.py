"""Inference: load a run or an export, generate with a fixed-size cache, export, serve."""
