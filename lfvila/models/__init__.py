"""LF-VILA models: HTWA video encoder, hierarchical text encoder, the joint model."""
