"""``format_reward``: 1.0 where the completion matches a pattern (default: reasoning then answer tags)."""

from __future__ import annotations

import functools
import re
from typing import Any

from grpo_lightning.rewards.messages import Conversation, completion_text

THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""The R1-style layout: reasoning in <think> tags, then the final answer in <answer> tags."""


@functools.lru_cache(maxsize=16)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.DOTALL)


def format_reward(
    prompts: list[Conversation], completions: list[Conversation], *, pattern: str = THINK_ANSWER, **columns: Any
) -> list[float]:
    """1.0 where the whole completion (surrounding whitespace aside) matches ``pattern``, else 0.0.

    ``pattern`` is a Python regular expression; ``.`` also matches newlines. A message-list
    completion is read from its last assistant message.

    >>> format_reward(["q"] * 3, ["<think>2+2</think> <answer>4</answer>", "<answer>4</answer>",
    ...                           "<think>x</think><answer>4</answer> and more"])
    [1.0, 0.0, 0.0]
    >>> format_reward(["q"], ["Answer: 4"], pattern=r"Answer: \\d+")
    [1.0]
    """
    regex = _compile(pattern)
    return [float(regex.fullmatch(completion_text(completion).strip()) is not None) for completion in completions]
