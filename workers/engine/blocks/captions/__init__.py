"""Captions of mask crops and of whole images through a transformers image-to-text model (``captioner``),
configured by ``config.CaptionConfig`` (torch-free)."""
