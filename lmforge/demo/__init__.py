"""The embedded default: a small model built locally and bundled demo data."""
