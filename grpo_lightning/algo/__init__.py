"""The GRPO algorithm as pure tensor functions: advantages, policy losses and their aggregation, KL
estimators, reward shaping, DAPO's dynamic sampling, pass@k, and the reference step
(reference.py) that every fast path is tested against. Nothing here imports Lightning or
transformers (tests/test_layering.py)."""
