"""The dataset format: the sample schema and everything that writes or reads it (rows, writer,
identity sidecars, shard reader, manifests, verify)."""
