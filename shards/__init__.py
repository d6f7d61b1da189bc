"""The sample schema, and the WebDataset shard writer, reader and verifier built on it."""
