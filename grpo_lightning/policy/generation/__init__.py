"""Sampling completions: the lean KV-cache loop (loop.py), and colocated vLLM (vllm.py)."""
