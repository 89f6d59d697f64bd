"""Core of the engine: plain types, errors, settings, the meter, devices, the per-image cache and configs.

Nothing here knows a model or a method. ``settings`` and ``config`` are torch-free (the web process reads
them); the rest may use torch.
"""
