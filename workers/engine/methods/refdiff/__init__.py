"""Ref-Diff (Ni et al., 2023): Stable Diffusion cross-attention fused with CLIP region scores."""
