"""Built-in verifiable tasks (arithmetic.py: the embedded default)."""
