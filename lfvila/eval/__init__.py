"""Downstream evaluation: retrieval now; QA and classification heads are meant to sit beside it."""
