"""Shard stage: long-form videos -> decoded frames -> WebDataset tar shards."""
