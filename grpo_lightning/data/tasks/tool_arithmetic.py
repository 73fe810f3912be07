"""Tool arithmetic: two-digit multiplication, with a ``multiply`` tool the policy may call.

Every problem is ``"What is 37 * 64?"`` with both factors in 10..99; the ``answer`` column is the
product as a string. The episode that earns the reward calls the tool and copies its result::

    user       What is 37 * 64?
    assistant  <tool_call>{"name": "multiply", "arguments": {"a": 37, "b": 64}}</tool_call>
    tool       2368
    assistant  37 * 64 = 2368

The reward is ``grpo_lightning.rewards.math.math_answer`` on the final answer against ``answer``
(it reads the answer's last number): the task needs no reward function of its own.

The shipped warm-start policy (``grpo_lightning/assets/agent-policy``, ``${asset:agent-policy}``,
made by ``scripts/make_agent_policy.py``) calls the tool in only a minority of its sampled
episodes and otherwise answers directly with a plausible but wrong product, so greedy decoding
mostly answers wrongly while groups of sampled episodes hold rewarded tool calls: GRPO's job is
to make calling the tool the policy's habit.
"""

from __future__ import annotations

import random

PROMPT = "What is {a} * {b}?"
"""How a problem is asked; ``{a}`` and ``{b}`` are the factors."""

FACTOR_RANGE = range(10, 100)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    return a * b


def load_splits(num_train: int = 7900, num_val: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``data.builder``: disjoint ``(train, val)`` rows ``{"prompt": "What is 37 * 64?", "answer": "2368"}``.

    All 8100 ordered pairs of factors are shuffled with ``seed``; the first ``num_train`` are the
    training rows and the last ``num_val`` the validation rows (so the validation rows do not
    change with ``num_train``).

    >>> train, val = load_splits(num_train=2, num_val=1)
    >>> train
    [{'prompt': 'What is 25 * 60?', 'answer': '1500'}, {'prompt': 'What is 31 * 51?', 'answer': '1581'}]
    """
    rows = [{"prompt": PROMPT.format(a=a, b=b), "answer": str(a * b)} for a in FACTOR_RANGE for b in FACTOR_RANGE]
    if num_train < 1 or num_val < 1 or num_train + num_val > len(rows):
        raise ValueError(
            f"num_train and num_val must be >= 1 and sum to at most {len(rows)}, got {num_train} and {num_val}"
        )
    random.Random(seed).shuffle(rows)
    return rows[:num_train], rows[len(rows) - num_val :]
