"""``length_penalty``: the soft overlong penalty of DAPO (Yu et al. 2025, arXiv:2503.14476, eq. 13).

With ``L`` the completion length, ``L_max = max_length`` and ``L_cache = cache_length``::

    0                                 if L <= L_max - L_cache
    (L_max - L_cache - L) / L_cache   if L_max - L_cache < L <= L_max   (linear from 0 to -1)
    -1                                if L > L_max

Length counts tokens of ``tokenizer`` (a name or directory; use ``${model.name_or_path}`` in a
config) when given, else characters. A message-list completion is measured by its last assistant
message.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from grpo_lightning.rewards.messages import Conversation, completion_text


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """The penalty for one completion of ``length``.

    >>> [overlong_penalty(n, max_length=100, cache_length=20) for n in (50, 80, 90, 100, 120)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    soft_start = max_length - cache_length
    if length <= soft_start:
        return 0.0
    if length > max_length:
        return -1.0
    return (soft_start - length) / cache_length


def length_penalty(
    prompts: list[Conversation],
    completions: list[Conversation],
    *,
    max_length: int,
    cache_length: int,
    tokenizer: Optional[str] = None,
    **columns: Any,
) -> list[float]:
    """Soft overlong penalty per completion, in [-1, 0].

    >>> length_penalty(["q"] * 3, ["a" * 5, "a" * 9, "a" * 11], max_length=10, cache_length=4)
    [0.0, -0.75, -1.0]
    """
    check_lengths(max_length=max_length, cache_length=cache_length)
    texts = [completion_text(completion) for completion in completions]
    if tokenizer is None:
        lengths = [len(text) for text in texts]
    else:
        encoded = _load_tokenizer(tokenizer)(texts, add_special_tokens=False)["input_ids"]
        lengths = [len(ids) for ids in encoded]
    return [overlong_penalty(length, max_length, cache_length) for length in lengths]


def check_lengths(*, max_length: int, cache_length: int, **_: Any) -> None:
    """The kwargs :func:`length_penalty` can work with; checked when the config is loaded."""
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"length_penalty needs 0 < cache_length <= max_length (got cache_length={cache_length}, "
            f"max_length={max_length}); lower cache_length, or raise max_length (the presets set it "
            "to generation.max_new_tokens)"
        )


length_penalty.check_kwargs = check_lengths
