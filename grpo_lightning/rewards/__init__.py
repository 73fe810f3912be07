"""Rewards: the reward-function contract and the weighted composition of several functions.

A reward function returns one float per completion, or ``None`` for "not applicable": that value
is left out of the function's logged mean and counts as 0 in the weighted total. It is called
as TRL 1.16's GRPOTrainer calls it, with keyword arguments only::

    fn(prompts=prompts, completions=completions, **columns, completion_ids=..., trainer_state=...,
       log_extra=..., log_metric=..., environments=..., conversations=...)

* ``prompts`` and ``completions`` [B] are strings, or chat message lists (TRL's conversational
  format: a prompt is a list of ``{"role", "content"}`` messages, a completion the messages the
  model added; :func:`~grpo_lightning.rewards.messages.completion_text` reads its last assistant
  message, as the built-in functions do).
* Every dataset column arrives as a keyword list [B] aligned with them, to every function.
* The rest goes only to functions that accept it (a parameter of that name, or ``**kwargs``),
  so a function without ``**kwargs`` is offered nothing it did not ask for:
  ``completion_ids`` [B] the sampled token ids, where the caller gives them;
  ``log_extra(column, values)`` adds a column (one value per completion) to the completions
  table and ``log_metric(name, value)`` a scalar metric for the step (both come back in
  :class:`~grpo_lightning.types.RewardScores`, ``extra_columns`` and ``logged_metrics``, the
  latter averaged over the call); and whatever the caller puts in ``context``
  (``trainer_state``; a multi-turn rollout's ``environments`` and ``conversations`` [B]).
* A required parameter the call cannot fill (e.g. TRL's ``solution`` without that column) is a
  :class:`RewardError` naming it.
* Turn rewards (ours; TRL has none): for the episodes of an agent (multi-turn rollouts), a function
  may return, for an episode, a list with one number per assistant turn instead of one number.
  The episode's reward is their sum (weighted like any other); each turn's reward sits on that
  turn's last sampled token and the rewards of the other functions on the last turn's, so the
  group estimators credit each turn with the rewards from it on (``algorithm.token_advantage``;
  algo/turns.py) rather than with the whole episode's. A list of another length is an error.
* ``async def`` functions (or objects with an async ``__call__``) are awaited together with
  ``asyncio.gather`` after the others, each under ``reward.timeout_s``, on a private event loop
  in a thread of its own, so calling from a thread that runs a loop (Jupyter) works.

Where we depart from TRL: none intended, except that functions written for our earlier
positional contract, ``fn(prompts, completions, **columns)``, keep working. A function that has
no ``completions`` parameter it can take by keyword, yet takes two positional arguments
(``def f(p, c, **kw)``), is still called ``fn(prompts, completions, **columns, **extras)``,
extras as above. Which call a function gets is decided once, from its signature, when
:class:`WeightedReward` is built; one without a readable signature (a builtin) gets the
positional call with the columns only.

Built in: :func:`~grpo_lightning.rewards.math.math_answer` (final answer vs. reference),
:func:`~grpo_lightning.rewards.format.format_reward` (a regex layout),
:func:`~grpo_lightning.rewards.length.length_penalty` (DAPO's soft overlong penalty) and
:class:`~grpo_lightning.rewards.reward_model.RewardModel` (a learned sequence classifier).
"""

from grpo_lightning.rewards.composite import (
    RewardError,
    RewardFunction,
    RewardScores,
    WeightedReward,
)
from grpo_lightning.rewards.format import format_reward
from grpo_lightning.rewards.length import length_penalty
from grpo_lightning.rewards.math import math_answer

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "WeightedReward",
    "format_reward",
    "length_penalty",
    "math_answer",
]
