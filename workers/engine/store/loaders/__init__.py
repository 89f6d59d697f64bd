"""Loaders: one function per on-disk format (SAM checkpoint, open_clip, transformers, diffusers, package),
each through the library's own loader after the store verified the files' checksums."""
