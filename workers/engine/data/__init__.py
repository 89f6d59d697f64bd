"""Data: the REFER format (reader and writer), the synthetic set, metrics, and the benchmark."""
