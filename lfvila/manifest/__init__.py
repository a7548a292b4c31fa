"""Manifest stage: raw clip-caption sources -> canonical clips -> long-form video tables."""
