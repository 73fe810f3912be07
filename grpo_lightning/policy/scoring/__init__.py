"""Scoring completions: log-probs and entropy of completion tokens (logprobs.py), the fused output
head (fused_head.py), length buckets (buckets.py)."""
