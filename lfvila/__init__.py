"""lfvila: rebuild the LF-VILA long-form corpus, shard it, pre-train from the shards."""
__version__ = "0.1.0"
