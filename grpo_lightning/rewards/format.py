"""``format_reward``: 1.0 where the completion matches a pattern (default: reasoning then answer tags)."""

from __future__ import annotations

import functools
import re
from typing import Any

THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""The R1-style layout: reasoning in <think> tags, then the final answer in <answer> tags."""


@functools.lru_cache(maxsize=16)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.DOTALL)


def format_reward(
    prompts: list[str], completions: list[str], *, pattern: str = THINK_ANSWER, **columns: Any
) -> list[float]:
    """1.0 where the whole completion (surrounding whitespace aside) matches ``pattern``, else 0.0.

    ``pattern`` is a Python regular expression; ``.`` also matches newlines.

    >>> format_reward(["q"] * 3, ["<think>2+2</think> <answer>4</answer>", "<answer>4</answer>",
    ...                           "<think>x</think><answer>4</answer> and more"])
    [1.0, 0.0, 0.0]
    >>> format_reward(["q"], ["Answer: 4"], pattern=r"Answer: \\d+")
    [1.0]
    """
    regex = _compile(pattern)
    return [float(regex.fullmatch(completion.strip()) is not None) for completion in completions]
