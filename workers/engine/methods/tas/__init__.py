"""TAS (Suo et al., EMNLP Findings 2023): captions (P), negative phrases (N) and a spatial rectifier."""
