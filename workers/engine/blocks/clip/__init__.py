"""CLIP through open_clip: one vision-tower adapter (``tower``) and the mask / text features built on it."""
