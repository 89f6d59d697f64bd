"""Tiny random-weight stand-ins in the real on-disk formats: they prove wiring, never quality."""
