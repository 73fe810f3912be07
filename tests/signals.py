"""Rewards that give a test its learning signal on every machine, whatever a policy samples.

A randomly initialised policy scores on the arithmetic task (or any real task) only by chance, and
which tokens it samples depends on the CPU's floating-point paths: a test that needs non-zero
advantages must not count on it. Name these in a config as ``tests.signals.<name>`` (the repository
root is on the path of pytest and of the subprocesses the tests start).

Parameters move for certain only with an entropy bonus as well (``algorithm.entropy_coef > 0``): a
group whose completions are all the same has a zero policy gradient whatever its rewards.
"""

from __future__ import annotations

import os
from typing import Any

RANDOM_MODEL_SEED = int(os.environ.get("GRPO_TEST_SEED", "0"))
"""The seed of every randomly initialised test model. CI runs the suite a second time with another
value (.ci/run): a test whose outcome depends on what a random policy happens to sample then meets
a second policy that samples otherwise."""


def alternating(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """1, 0, 1, 0, ... by row: every group of an even size has rewards with spread, so every
    advantage is non-zero, whatever was sampled.

    >>> alternating(["q"] * 4, ["a", "a", "b", "c"])
    [1.0, 0.0, 1.0, 0.0]
    """
    return [float(index % 2 == 0) for index in range(len(completions))]


def constant_for_even_first_digit(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """0.5 for every completion of a prompt that starts with an even digit (a group without spread,
    which dynamic sampling drops), :func:`alternating` for the others (a group with spread).

    >>> constant_for_even_first_digit(["21+3=", "21+3=", "12+3=", "12+3="], ["1", "1", "2", "3"])
    [0.5, 0.5, 1.0, 0.0]
    """
    return [
        0.5 if int(prompt[0]) % 2 == 0 else reward
        for prompt, reward in zip(prompts, alternating(prompts, completions), strict=True)
    ]
