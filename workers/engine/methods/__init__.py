"""Methods: one package per paper, each a pipeline with a frozen config and ``predict(ctx, expressions)``.

The torch-free ``catalogue`` names every pipeline, its config class and what it needs; ``registry`` builds
pipelines from it. A new method is one package here plus one catalogue entry.
"""
