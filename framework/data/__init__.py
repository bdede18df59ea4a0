"""Data: shard format, manifests, record validation, and the length-bucketed streaming loader."""
