"""`mgr generate` and `mgr export`."""
