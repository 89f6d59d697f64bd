"""Benchmark runs (``manage.py benchmark``) stored with their per-pipeline results and shown on pages."""
