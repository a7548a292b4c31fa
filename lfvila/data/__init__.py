"""Streaming loader: shards -> training batches, exactly resumable."""
