"""LGD (Li et al., Pattern Recognition 2025): MLLM-written descriptions of the referent guide CLIP."""
