"""Guessing game: a stateful multi-turn environment, following TRL's ``environment_factory`` contract.

The policy is told that a number from 1 to 15 is hidden and finds it with the ``guess`` tool,
which answers ``"higher"``, ``"lower"`` or ``"correct"``. The environment owns the reward
(:meth:`GuessingGame.get_reward`): the fewer guesses, the more reward, so binary search (at
most 4 guesses, 3.27 on average, mean reward 0.62) beats a search that guesses any number
consistent with the feedback so far (8% of its games need more than :data:`MAX_GUESSES`
guesses; mean reward 0.49)::

    user       I'm thinking of a number from 1 to 15. Find it. You have 6 guesses.
    assistant  <tool_call>{"name": "guess", "arguments": {"number": 8}}</tool_call>
    tool       lower
    assistant  <tool_call>{"name": "guess", "arguments": {"number": 4}}</tool_call>
    tool       correct

The secret is the rows' ``secret`` column, which TRL passes to :meth:`GuessingGame.reset` with
the row's other columns. The shipped warm-start policy (``${asset:agent-policy}``, made by
``scripts/make_agent_policy.py``) was trained on episodes of the consistent random search, so
it reads the feedback (not always: 60 ruled-out guesses in 120 sampled games) but does not halve
the range, which the reward favours (the README records how far a run gets with turn rewards, and
why whole-episode rewards do not get there).
"""

from __future__ import annotations

import random

LOWEST, HIGHEST = 1, 15
"""The range the secret is drawn from, both ends included."""

MAX_GUESSES = 6
"""Guesses allowed per game; the game ends, unwon, after this many wrong ones."""

PROMPT = f"I'm thinking of a number from {LOWEST} to {HIGHEST}. Find it."

HIGHER, LOWER, CORRECT = "higher", "lower", "correct"
GAME_OVER = "the game is over"
"""What :meth:`GuessingGame.guess` answers once the game has ended."""


class GuessingGame:
    """One game of guess-the-number; TRL builds one per episode with ``GuessingGame()``.

    The public method :meth:`guess` is the policy's only tool; :meth:`reset` and
    :meth:`get_reward` are called by the rollout, and helpers are private so that they are
    not taken for tools.

    >>> game = GuessingGame()
    >>> game.reset(secret=4, prompt=PROMPT)
    ' You have 6 guesses.'
    >>> game.guess(8), game.guess(2), game.done, game.guess(4), game.done
    ('lower', 'higher', False, 'correct', True)
    >>> round(game.get_reward(), 3)
    0.667
    """

    def __init__(self, max_guesses: int = MAX_GUESSES):
        if max_guesses < 1:
            raise ValueError(f"max_guesses must be >= 1, got {max_guesses}")
        self.max_guesses = max_guesses
        self.secret = LOWEST
        self.guesses: list[int] = []
        self.found = False

    def reset(self, secret: int, **row: object) -> str:
        """Start a new game with the row's ``secret``; returns the text appended to the prompt."""
        # Rows read back from a file may hold the secret as a string.
        self.secret = int(secret)
        self.guesses = []
        self.found = False
        return f" You have {self.max_guesses} guesses."

    def guess(self, number: int) -> str:
        """Guess the hidden number.

        Args:
            number: The guess, a whole number from 1 to 15.

        Returns:
            "higher" if the hidden number is higher than the guess, "lower" if it is lower,
            "correct" if it is the guess.
        """
        if self.done:
            return GAME_OVER
        self.guesses.append(int(number))
        if self.guesses[-1] == self.secret:
            self.found = True
            return CORRECT
        return HIGHER if self.secret > self.guesses[-1] else LOWER

    @property
    def done(self) -> bool:
        """Whether the game has ended: the number was found or no guess is left."""
        return self.found or len(self.guesses) >= self.max_guesses

    def get_reward(self) -> float:
        """1 for finding the number at the first guess, ``1/max_guesses`` less for each further
        guess, 0 if it was not found."""
        if not self.found:
            return 0.0
        return 1.0 - (len(self.guesses) - 1) / self.max_guesses


def wasted_turns(*, conversations: list[list[dict]], environments: list[GuessingGame], **_: object) -> list[float]:
    """A reward function: ``-1/max_guesses`` for each assistant turn that was not a guess (a malformed
    or unknown call, bad arguments, an answer without a call).

    The game only sees the calls that reach :meth:`GuessingGame.guess`, so its own reward leaves a
    wasted turn free: nothing in it pushes against the malformed calls that sampling makes. With
    this added to it (``reward=environment '+reward.functions.wasted={fn:...wasted_turns}'``), a found
    number earns ``1 - (turns - 1) / max_guesses``: the fewer turns, the more. The preset trains on
    :func:`turn_rewards` instead, the same total split by turn.

    >>> game = GuessingGame()
    >>> _ = game.reset(secret=3), game.guess(3)
    >>> turns = [{"role": "user"}, {"role": "assistant"}, {"role": "tool"}, {"role": "assistant"}, {"role": "tool"}]
    >>> round(wasted_turns(conversations=[turns], environments=[game])[0], 3)
    -0.167
    """
    return [
        -(sum(message["role"] == "assistant" for message in messages) - len(game.guesses)) / game.max_guesses
        for messages, game in zip(conversations, environments)
    ]


def turn_rewards(
    *, conversations: list[list[dict]], environments: list[GuessingGame], **_: object
) -> list[list[float]]:
    """A reward function with one reward per assistant turn (turn rewards, grpo_lightning.rewards):
    1 for the turn whose guess finds the number, ``-1/max_guesses`` for every other turn (a wrong
    guess, a malformed call, an answer without a call).

    A found number earns ``1 - (turns - 1) / max_guesses`` in all, as the game's reward with
    :func:`wasted_turns` does, and an unfound one ``-turns / max_guesses``; but each turn is
    credited with the rewards from it on, so a late guess does not answer for the turns before it.
    ``experiment=agent_guessing`` trains on it, with the game's own reward logged only
    (``agent.environment_reward_weight=0``).

    >>> game = GuessingGame()
    >>> _ = game.reset(secret=3), game.guess(8), game.guess(3)
    >>> turns = [{"role": "user"}, {"role": "assistant"}, {"role": "tool", "name": "guess", "content": "lower"},
    ...          {"role": "assistant"}, {"role": "tool", "name": "guess", "content": "correct"}]
    >>> [round(r, 3) for r in turn_rewards(conversations=[turns], environments=[game])[0]]
    [-0.167, 1.0]
    """
    rewards = []
    for messages, game in zip(conversations, environments):
        episode: list[float] = []
        for message in messages:
            if message["role"] == "assistant":
                episode.append(-1.0 / game.max_guesses)
            elif message["role"] == "tool" and message.get("name") == "guess" and message.get("content") == CORRECT:
                episode[-1] = 1.0
        rewards.append(episode)
    return rewards


def load_splits(num_train: int = 3000, num_val: int = 30, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``data.builder``: rows ``{"prompt": PROMPT, "secret": 7}``.

    The model never sees the secret, so every row's prompt is the same and the rows differ only
    in their secret: the training secrets are drawn uniformly with ``seed``, and the validation
    secrets run through the range in order (1, 2, ..., 15, 1, ...) so that a validation pass of
    a multiple of 15 rows measures every secret equally often.

    >>> train, val = load_splits(num_train=4, num_val=16)
    >>> [row["secret"] for row in val][-3:], len(train)
    ([14, 15, 1], 4)
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    rng = random.Random(seed)
    train = [{"prompt": PROMPT, "secret": rng.randint(LOWEST, HIGHEST)} for _ in range(num_train)]
    size = HIGHEST - LOWEST + 1
    val = [{"prompt": PROMPT, "secret": LOWEST + i % size} for i in range(num_val)]
    return train, val
