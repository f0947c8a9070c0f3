"""`mgr serve` and `mgr bench-inference`."""
