"""Ensemble: fuse the rankings of several pipelines (docs/METHODS.md#ensemble)."""
