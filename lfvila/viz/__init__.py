"""Seeing a built corpus: summary tables (``inspect``), contact sheets (``preview``), plots (``report``)."""
