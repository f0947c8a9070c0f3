"""Feed-forward kinds, one file each, in a registry (like attention/): the ffn helper fills this in."""
