"""The shared base of mgr's layers: user-facing errors and the few neural-network pieces that
both the attention algebras and the decoder build on (bias-free `Dense`, the ReLU² `MLP`,
parameter-free RMS normalisation). It imports nothing of the project, so every other package
may import it (see ARCHITECTURE.md).
"""
