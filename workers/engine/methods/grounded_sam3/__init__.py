"""Grounded SAM 3: an MLLM turns the expression into a noun phrase and picks among SAM 3 instances."""
