"""Train the warm-start agent policy shipped in ``grpo_lightning/assets/agent-policy``.

One tiny Llama decoder, random-initialised from the seed, supervised on multi-turn tool-using
episodes of both built-in agentic tasks, tokenized exactly as the multi-turn rollout tokenizes
them: the prompt from the chat template (with the tools line), then per assistant turn its text
and ``<|im_end|>`` (the only tokens with a loss), then the tokens the rollout inserts after a
tool call (TRL's recipe, :meth:`ChatFormat.inserted_ids`).

- Multiplication (``data/tasks/tool_arithmetic.py``): each time a problem is drawn, with
  probability ``TOOL_RATE`` the episode calls ``multiply`` and answers with its result;
  otherwise it answers at once with a wrong product within ``WRONG_SPREAD`` of the right one.
  Redrawing the choice every time (instead of fixing it per problem) keeps the model from
  memorising which problems used the tool, which would leak into unseen ones as a per-problem
  habit. The policy therefore calls the tool in a minority of its samples and is right when it
  does, while greedy decoding answers directly and wrongly: the starting point for GRPO.
- Guessing game (``data/tasks/guessing_game.py``): fresh episodes of a search that guesses a
  uniformly random number consistent with the feedback so far, until "correct" or out of
  guesses, with the guesses' digits learned against that whole distribution (soft targets).
  The policy learns to read "higher"/"lower" but not to halve the range.

Validation rows are never trained on; the episodes measured on them (the script's own small
multi-turn loop, :func:`run_episodes`) give the numbers in the model card. Deterministic for a
given seed, torch version and ``--threads``: the data come from seeded generators and torch runs
with deterministic algorithms. One thread is the default because the result must not depend on
the machine, and because on a shared machine two threads that wait for each other are slower
than one.

Usage::

    python scripts/make_agent_policy.py [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, Optional, Sequence

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import get_json_schema

from grpo_lightning.data.tasks import guessing_game, tool_arithmetic
from grpo_lightning.data.tasks.guessing_game import GuessingGame
from grpo_lightning.data.tasks.tool_arithmetic import multiply
from grpo_lightning.rewards.math import math_answer

TOOL_RATE = 0.35
"""Fraction of the multiplication episodes, redrawn every time, that call the tool."""
WRONG_SPREAD = 0.1
"""A direct (wrong) answer is drawn uniformly from the numbers within this fraction of the product."""
SAMPLES_PER_PROMPT = 4
MAX_TURN_TOKENS = 40
"""Longest assistant turn generated when measuring: a tool call takes 25 tokens."""
MAX_TURNS = 8
MAX_POSITIONS = 384
"""Enough for the prompt and six guesses (about 280 tokens), with room to spare."""
IGNORE_INDEX = -100
LENGTH_GROUPS = 2

PAD, UNK, TURN_START, END_OF_TURN = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
TOOL_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
PIECES = r" ?[A-Za-z]+| ?[^A-Za-z0-9\s]|\d|\s"
"""Pre-tokenizer: a word or a punctuation mark with the space before it, a single digit, or a
lone whitespace character. Every character lands in exactly one piece and the decoder joins the
pieces back without adding anything, so decoding gives back the text itself, and a number is
always spelled digit by digit with the same ten tokens."""
ALWAYS_IN_VOCABULARY = [*"0123456789", *'{}[]":,', " ", "-", "."]
"""Digits and JSON punctuation, so that any integer argument or result can be written."""

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n' }}{%- endif %}"
    "{{- 'Tools:' }}"
    "{%- for tool in tools %}"
    "{%- set function = tool.function if tool.function is defined else tool %}"
    "{{- ' ' + function.name + '(' + (function.parameters.properties | list | join(', ')) + ')' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first and tools %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '<tool_call>{\"name\": ' + (call.name | tojson) + ', \"arguments\": ' }}"
    "{{- call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user\\n' }}{%- endif %}"
    "{{- '<tool_response>' + (message.content | string) + '</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML (Qwen2.5's tool format) made compact for a tiny model: the tools are one system line
``Tools: multiply(a, b)`` (names and parameter names from the schemas), an assistant turn is its
content then one ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` per call, and tool
results are ``<tool_response>...</tool_response>`` inside a user turn."""

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def make_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``vocabulary`` (the special tokens and tool tags come first)."""
    tokens = [PAD, UNK, TURN_START, END_OF_TURN, *TOOL_TAGS, *vocabulary]
    backend = Tokenizer(models.WordLevel(vocab={token: i for i, token in enumerate(tokens)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(token, normalized=False) for token in (PAD, UNK, TURN_START, END_OF_TURN)])
    # Not special, like Qwen2.5's: decoding with skip_special_tokens=True must keep the tool calls.
    backend.add_tokens([AddedToken(token, normalized=False, special=False) for token in TOOL_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=END_OF_TURN,
        chat_template=CHAT_TEMPLATE,
        # The default clean-up would delete the space in " ," or " ." and change the text.
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer whose vocabulary is every piece of every text the two tasks render.

    The texts are rendered with the chat template by a tokenizer that knows only the special
    tokens, cut into pieces by the pre-tokenizer, and the pieces sorted: the vocabulary depends
    on the tasks alone.
    """
    renderer = make_tokenizer([])
    specials = re.compile("|".join(re.escape(token) for token in (PAD, UNK, TURN_START, END_OF_TURN, *TOOL_TAGS)))
    pieces = set(ALWAYS_IN_VOCABULARY)
    for text in rendered_texts(renderer):
        for segment in specials.split(text):
            pieces.update(piece for piece, _ in renderer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(segment))
    return make_tokenizer(sorted(pieces))


def rendered_texts(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Every prompt of both tasks, an episode with each tool and each tool result text, and the
    dummy conversation of :meth:`ChatFormat.inserted_ids`."""
    train, val = tool_arithmetic.load_splits()
    texts = [render_prompt(tokenizer, row, ARITHMETIC) for row in train + val]
    for row in guessing_game.load_splits(num_train=1, num_val=1)[1]:
        texts.append(render_prompt(tokenizer, row, GUESSING, GuessingGame().reset(**row)))
    results = ["2368", guessing_game.HIGHER, guessing_game.LOWER, guessing_game.CORRECT, guessing_game.GAME_OVER]
    for task, arguments in ((ARITHMETIC, {"a": 37, "b": 64}), (GUESSING, {"number": 8})):
        name = task.schemas[0]["function"]["name"]
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        for result in results:
            episode = [
                {"role": "user", "content": "dummy"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": name, "content": result},
                {"role": "assistant", "content": direct_answer(37, 64, 2368)},
            ]
            texts.append(tokenizer.apply_chat_template(episode, tools=task.schemas, tokenize=False))
    return texts


@dataclass(frozen=True)
class Task:
    """What the rollout needs of a task: its tool functions, or an environment whose methods are the tools."""

    tools: tuple[Callable, ...] = ()
    environment_factory: Optional[Callable[[], Any]] = None

    def tools_of(self, environment: Optional[Any]) -> list[Callable]:
        """The tools of one episode: TRL's rule for an environment is that its public methods
        other than ``reset`` and ``get_reward`` are the tools."""
        if environment is None:
            return list(self.tools)
        names = [name for name in dir(environment) if not name.startswith("_") and name not in ("reset", "get_reward")]
        return [getattr(environment, name) for name in names if callable(getattr(environment, name))]

    @functools.cached_property
    def schemas(self) -> list[dict]:
        environment = self.environment_factory() if self.environment_factory else None
        return [get_json_schema(tool) for tool in self.tools_of(environment)]


ARITHMETIC = Task(tools=(multiply,))
GUESSING = Task(environment_factory=GuessingGame)


def render_prompt(tokenizer: PreTrainedTokenizerFast, row: dict, task: Task, observation: str = "") -> str:
    """The rollout's prompt text: the row's prompt and the environment's observation as one user turn."""
    messages = [{"role": "user", "content": row["prompt"] + observation}]
    return tokenizer.apply_chat_template(messages, tools=task.schemas, add_generation_prompt=True, tokenize=False)


def tool_call_text(name: str, arguments: dict) -> str:
    """An assistant turn that makes one call, as the chat template renders it."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class ChatFormat:
    """The rollout's token ids for the pieces of an episode."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer = tokenizer
        self._inserted: dict[tuple[tuple[str, str], ...], list[int]] = {}

    def prompt_ids(self, row: dict, task: Task, observation: str = "") -> list[int]:
        text = render_prompt(self.tokenizer, row, task, observation)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def turn_ids(self, text: str) -> list[int]:
        """An assistant turn as the policy samples it: its text, then ``<|im_end|>``."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def inserted_ids(self, tool_results: tuple[tuple[str, str], ...]) -> list[int]:
        """The tokens inserted after a turn that called tools, given its (tool name, result text)
        pairs: the template's glue after ``<|im_end|>``, the tool results' turn and the next
        assistant header, computed TRL's way, as the difference of two rendered conversations."""
        if tool_results not in self._inserted:
            dummy = [
                {"role": "user", "content": "dummy"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"type": "function", "function": {"name": tool_results[0][0], "arguments": {}}}],
                },
            ]
            messages = [{"role": "tool", "name": name, "content": content} for name, content in tool_results]
            render = functools.partial(self.tokenizer.apply_chat_template, tokenize=True, return_dict=False)
            prefix = render(dummy, add_generation_prompt=False)
            prefix = prefix[: len(prefix) - prefix[::-1].index(self.tokenizer.eos_token_id)]
            full = render(dummy + messages, add_generation_prompt=True)
            if full[: len(prefix)] != prefix:
                raise AssertionError("the chat template does not render a conversation as a prefix of its continuation")
            self._inserted[tool_results] = full[len(prefix) :]
        return self._inserted[tool_results]


@dataclass
class Episode:
    """The token ids of one episode, which of them the policy produced (the only ones with a
    loss), and, for some of those, the distribution to learn instead of the token drawn."""

    ids: list[int]
    produced: list[bool] = field(default_factory=list)
    soft_targets: dict[int, dict[int, float]] = field(default_factory=dict)
    """Position in ``ids`` -> {token id: probability}."""

    def __post_init__(self) -> None:
        self.produced = [False] * len(self.ids)

    def extend(self, ids: list[int], *, produced: bool) -> None:
        self.ids += ids
        self.produced += [produced] * len(ids)


def factors(row: dict) -> tuple[int, int]:
    a, b = re.findall(r"\d+", row["prompt"])
    return int(a), int(b)


def wrong_products(product: int) -> list[int]:
    """The plausible wrong answers: the numbers within ``WRONG_SPREAD`` of the product but it."""
    low, high = round(product * (1 - WRONG_SPREAD)), round(product * (1 + WRONG_SPREAD))
    return [number for number in range(low, high + 1) if number != product]


def direct_answer(a: int, b: int, product: int) -> str:
    """An answer given without the tool, e.g. ``37 * 64 = 2412``."""
    return f"{a} * {b} = {product}"


def arithmetic_episode(chat: ChatFormat, row: dict, rng: random.Random) -> Episode:
    """With probability ``TOOL_RATE``, calls ``multiply`` and answers with its result (``2368``);
    else answers at once with one of the ``wrong_products`` (``37 * 64 = 2412``), whose tokens
    are learned against all of them (soft targets, as the guesses of :func:`guessing_episode`).

    The direct answer restates the problem so that its first token is a copy of the prompt,
    which greedy decoding then prefers to the tool call; a bare product would spread the direct
    answers' mass over the leading digits, and the tool call, with less mass than all of them
    but more than each, would win the argmax. The answer after the tool is the bare result so
    that copying it is not confused with the direct answers' estimates.
    """
    episode = Episode(chat.prompt_ids(row, ARITHMETIC))
    a, b = factors(row)
    if rng.random() < TOOL_RATE:
        episode.extend(chat.turn_ids(tool_call_text("multiply", {"a": a, "b": b})), produced=True)
        episode.extend(chat.inserted_ids((("multiply", str(multiply(a, b))),)), produced=False)
        episode.extend(chat.turn_ids(str(multiply(a, b))), produced=True)
    else:
        candidates = wrong_products(a * b)
        answer = rng.choice(candidates)
        turn = chat.turn_ids(direct_answer(a, b, answer))
        # The answer and <|im_end|> end the turn.
        add_soft_targets(episode, turn, len(turn), candidates, answer, chat.tokenizer.eos_token, chat)
        episode.extend(turn, produced=True)
    return episode


def guessing_episode(chat: ChatFormat, row: dict, rng: random.Random) -> Episode:
    """Guesses a uniformly random number consistent with the feedback so far, until the game ends.

    The tokens that spell each guess are learned against the search's whole distribution (the
    number uniform over the consistent ones) rather than the one number drawn: the same optimum,
    without the noise of single draws, which otherwise hides for long where the range ends. The
    episode stops after the last call, as the rollout does when the environment is done.
    """
    game = GuessingGame()
    episode = Episode(chat.prompt_ids(row, GUESSING, game.reset(**row)))
    low, high = guessing_game.LOWEST, guessing_game.HIGHEST
    while not game.done:
        number = rng.randint(low, high)
        turn = chat.turn_ids(tool_call_text("guess", {"number": number}))
        # The number and the "}" that closes the arguments come just before "}</tool_call><|im_end|>".
        add_soft_targets(episode, turn, len(turn) - 3, range(low, high + 1), number, "}", chat)
        episode.extend(turn, produced=True)
        feedback = game.guess(number)
        if feedback == guessing_game.HIGHER:
            low = number + 1
        elif feedback == guessing_game.LOWER:
            high = number - 1
        if not game.done:
            episode.extend(chat.inserted_ids((("guess", feedback),)), produced=False)
    return episode


def add_soft_targets(
    episode: Episode, turn: list[int], end: int, candidates: Sequence[int], drawn: int, follower: str, chat: ChatFormat
) -> None:
    """Learn the tokens that spell ``drawn`` and the ``follower`` after it, which end at
    ``turn[end - 1]``, against a number drawn uniformly from ``candidates``: at each of those
    tokens, the distribution of that token among the candidates spelled like ``drawn`` so far.

    ``episode`` does not hold ``turn`` yet.
    """
    spelling = spelled(chat, drawn, follower)
    first = end - len(spelling)
    if tuple(turn[first:end]) != spelling:
        raise AssertionError(f"{drawn}{follower} is not where it was expected in {turn}")
    spellings = [spelled(chat, number, follower) for number in candidates]
    for length in range(len(spelling)):
        nexts = [other[length] for other in spellings if other[:length] == spelling[:length]]
        episode.soft_targets[len(episode.ids) + first + length] = {
            token: nexts.count(token) / len(nexts) for token in set(nexts)
        }


@functools.lru_cache(maxsize=None)
def spelled(chat: ChatFormat, number: int, follower: str) -> tuple[int, ...]:
    """The ids of a number's digits and of the ``follower`` after them."""
    return tuple(chat.tokenizer(f"{number}{follower}", add_special_tokens=False)["input_ids"])


def collate(episodes: list[Episode], pad_token_id: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``; ``labels`` (IGNORE_INDEX off the
    produced tokens); the soft targets as ``soft_index`` [N, 2] (row, position) and
    ``soft_probs`` [N, V]."""
    width = max(len(episode.ids) for episode in episodes)
    input_ids = torch.full((len(episodes), width), pad_token_id)
    produced = torch.zeros(len(episodes), width, dtype=torch.bool)
    for row, episode in enumerate(episodes):
        input_ids[row, : len(episode.ids)] = torch.tensor(episode.ids)
        produced[row, : len(episode.ids)] = torch.tensor(episode.produced)
    attention_mask = (torch.arange(width) < torch.tensor([len(e.ids) for e in episodes])[:, None]).long()
    soft = [(row, position, target) for row, e in enumerate(episodes) for position, target in e.soft_targets.items()]
    soft_probs = torch.zeros(len(soft), vocab_size)
    for i, (_, _, target) in enumerate(soft):
        soft_probs[i, list(target)] = torch.tensor(list(target.values()))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": input_ids.masked_fill(~produced, IGNORE_INDEX),
        "soft_index": torch.tensor([(row, position) for row, position, _ in soft], dtype=torch.long).view(-1, 2),
        "soft_probs": soft_probs,
    }


def sft_loss(model: LlamaForCausalLM, episodes: list[Episode], pad_token_id: int) -> torch.Tensor:
    """Mean cross-entropy over the produced tokens of ``episodes``, against the soft target
    where there is one.

    The episodes are sorted by length and padded in ``LENGTH_GROUPS`` groups: the lengths of a
    game vary fourfold, and padding every one to the longest would waste a third of the work.
    """
    episodes = sorted(episodes, key=lambda episode: len(episode.ids))
    size = math.ceil(len(episodes) / LENGTH_GROUPS)
    total, count = torch.zeros(()), 0
    for start in range(0, len(episodes), size):
        batch = collate(episodes[start : start + size], pad_token_id, model.config.vocab_size)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs = logits[:, :-1].log_softmax(dim=-1)  # [B, T-1, V], predicting tokens 1..T-1
        labels = batch["labels"][:, 1:]
        losses = -log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # [B, T-1]
        rows, positions = batch["soft_index"].unbind(dim=1)
        soft_losses = -(batch["soft_probs"] * log_probs[rows, positions - 1]).sum(dim=-1)
        losses = losses.index_put((rows, positions - 1), soft_losses)
        mask = labels != IGNORE_INDEX
        total, count = total + losses[mask].sum(), count + int(mask.sum())
    return total / count


def model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A Llama decoder of about 0.6M parameters with room for the longest guessing episode."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train(
    model: LlamaForCausalLM,
    chat: ChatFormat,
    arithmetic_rows: list[dict],
    guessing_rows: list[dict],
    *,
    steps: int,
    arithmetic_batch_size: int,
    guessing_batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """AdamW with linear warm-up and cosine decay; every step, one batch of fresh episodes of each task.

    The two tasks get a batch each rather than sharing one because their episodes differ in
    length four-fold: a shared batch would pad every multiplication episode to a game's length.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))),
    )
    rng = random.Random(seed)
    pad = chat.tokenizer.pad_token_id
    model.train()
    for step in range(steps):
        arithmetic = [arithmetic_episode(chat, rng.choice(arithmetic_rows), rng) for _ in range(arithmetic_batch_size)]
        guessing = [guessing_episode(chat, rng.choice(guessing_rows), rng) for _ in range(guessing_batch_size)]
        arithmetic_loss, guessing_loss = sft_loss(model, arithmetic, pad), sft_loss(model, guessing, pad)
        optimizer.zero_grad(set_to_none=True)
        (arithmetic_loss + guessing_loss).backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss multiply {arithmetic_loss.item():.4f}  guess {guessing_loss.item():.4f}",
                flush=True,
            )
    model.eval()


@dataclass
class Rollout:
    """One measured episode: its ids so far, its environment and the assistant turns' texts."""

    ids: list[int]
    tools: dict[str, Callable]
    environment: Optional[Any]
    turns: list[str] = field(default_factory=list)
    calls: int = 0
    finished: bool = False

    @property
    def final_answer(self) -> str:
        """The last turn if it called no tool (the episode's answer), else nothing."""
        return self.turns[-1] if self.turns and not TOOL_CALL.search(self.turns[-1]) else ""


def execute(call_text: str, tools: dict[str, Callable]) -> tuple[str, str]:
    """Run one parsed call; (tool name, result text), the error as the result if the call is bad."""
    try:
        call = json.loads(call_text)
        name = call["name"]
        return name, str(tools[name](**call["arguments"]))
    except (ValueError, KeyError, TypeError) as error:
        return next(iter(tools)), f"error: {error!r}"


@torch.no_grad()
def run_episodes(
    model: LlamaForCausalLM, chat: ChatFormat, rows: list[dict], task: Task, *, sample: bool, chunk_size: int = 256
) -> list[Rollout]:
    """Play one episode per row the way the rollout does: generate a turn until ``<|im_end|>``,
    run its tool calls, insert their results, and repeat until a turn calls no tool, the
    environment is done, or ``MAX_TURNS`` turns were taken. Sampling is at T=1 without
    top-k or top-p; otherwise greedy."""
    rollouts = []
    for row in rows:
        environment = task.environment_factory() if task.environment_factory else None
        observation = (environment.reset(**row) if environment else None) or ""
        tools = {tool.__name__: tool for tool in task.tools_of(environment)}
        rollouts.append(Rollout(chat.prompt_ids(row, task, observation), tools, environment))
    eos = chat.tokenizer.eos_token_id
    for _ in range(MAX_TURNS):
        active = [rollout for rollout in rollouts if not rollout.finished]
        for start in range(0, len(active), chunk_size):
            chunk = active[start : start + chunk_size]
            for rollout, new_ids in zip(chunk, generate_turns(model, chat, [r.ids for r in chunk], sample=sample)):
                if eos not in new_ids:  # the turn ran past MAX_TURN_TOKENS: the episode fails
                    rollout.finished = True
                    continue
                turn = new_ids[: new_ids.index(eos) + 1]
                rollout.ids += turn
                rollout.turns.append(chat.tokenizer.decode(turn[:-1]))
                calls = TOOL_CALL.findall(rollout.turns[-1])
                if not calls:
                    rollout.finished = True
                    continue
                rollout.calls += len(calls)
                results = tuple(execute(call, rollout.tools) for call in calls)
                rollout.ids += chat.inserted_ids(results)
                too_long = len(rollout.ids) + MAX_TURN_TOKENS > model.config.max_position_embeddings
                rollout.finished = too_long or (rollout.environment is not None and rollout.environment.done)
    return rollouts


def generate_turns(
    model: LlamaForCausalLM, chat: ChatFormat, prompts: list[list[int]], *, sample: bool
) -> list[list[int]]:
    """The next assistant turn of each of ``prompts`` (left-padded into one batch): up to
    ``MAX_TURN_TOKENS`` new ids each, ``<|im_end|>`` and any padding after it included."""
    width = max(len(ids) for ids in prompts)
    lengths = torch.tensor([len(ids) for ids in prompts])
    input_ids = torch.tensor([[chat.tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompts])
    attention_mask = (torch.arange(width) >= width - lengths[:, None]).long()
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=MAX_TURN_TOKENS, **sampling
    )
    return output[:, width:].tolist()


def consistent_fraction(guesses: list[int], secret: int) -> float:
    """Fraction of ``guesses`` that the feedback before each still allowed."""
    low, high, consistent = guessing_game.LOWEST, guessing_game.HIGHEST, 0
    for number in guesses:
        consistent += low <= number <= high
        if number < secret:
            low = max(low, number + 1)
        elif number > secret:
            high = min(high, number - 1)
    return consistent / len(guesses)


def search_baselines(seed: int, num_games: int = 20_000) -> dict[str, float]:
    """Binary search (every secret once, exact) and the consistent random search the guessing
    episodes were drawn from (``num_games`` simulated games), measured like the policy."""
    rng = random.Random(seed)
    baselines = {}
    secrets = range(guessing_game.LOWEST, guessing_game.HIGHEST + 1)
    for search, games in (("binary", list(secrets)), ("random", [rng.choice(secrets) for _ in range(num_games)])):
        played = []
        for secret in games:
            game = GuessingGame()
            game.reset(secret=secret)
            low, high = guessing_game.LOWEST, guessing_game.HIGHEST
            while not game.done:
                number = (low + high) // 2 if search == "binary" else rng.randint(low, high)
                feedback = game.guess(number)
                low, high = (number + 1, high) if feedback == guessing_game.HIGHER else (low, number - 1)
            played.append(game)
        baselines[f"guess/{search}/guesses"] = fmean(len(game.guesses) for game in played)
        baselines[f"guess/{search}/reward"] = fmean(game.get_reward() for game in played)
        baselines[f"guess/{search}/found"] = fmean(game.found for game in played)
        baselines[f"guess/{search}/consistent"] = fmean(
            consistent_fraction(game.guesses, game.secret) for game in played
        )
    return baselines


def measure(
    model: LlamaForCausalLM, chat: ChatFormat, arithmetic_rows: list[dict], guessing_rows: list[dict], seed: int
) -> dict[str, float]:
    """Greedy and sampled (``SAMPLES_PER_PROMPT`` per row) episodes of both tasks on held-out rows."""
    metrics = {}
    for mode, sample in (("greedy", False), ("sampled", True)):
        repeats = SAMPLES_PER_PROMPT if sample else 1
        torch.manual_seed(seed)
        rows = [row for row in arithmetic_rows for _ in range(repeats)]
        rollouts = run_episodes(model, chat, rows, ARITHMETIC, sample=sample)
        rewards = math_answer(
            [row["prompt"] for row in rows],
            [rollout.final_answer for rollout in rollouts],
            answer=[row["answer"] for row in rows],
        )
        with_tool = [reward for reward, rollout in zip(rewards, rollouts) if rollout.calls]
        metrics[f"multiply/{mode}/tool_rate"] = len(with_tool) / len(rollouts)
        metrics[f"multiply/{mode}/reward"] = fmean(rewards)
        metrics[f"multiply/{mode}/reward_with_tool"] = fmean(with_tool) if with_tool else math.nan

        rows = [row for row in guessing_rows for _ in range(repeats)]
        games = [rollout.environment for rollout in run_episodes(model, chat, rows, GUESSING, sample=sample)]
        metrics[f"guess/{mode}/guesses"] = fmean(len(game.guesses) for game in games)
        metrics[f"guess/{mode}/reward"] = fmean(game.get_reward() for game in games)
        metrics[f"guess/{mode}/found"] = fmean(game.found for game in games)
        consistent = [consistent_fraction(game.guesses, game.secret) for game in games if game.guesses]
        metrics[f"guess/{mode}/consistent"] = fmean(consistent) if consistent else math.nan
    return metrics


def markdown_table(metrics: dict[str, float], task: str, columns: dict[str, str], rows: dict[str, str]) -> str:
    """A table of ``metrics[f"{task}/{column}/{key}"]``: a column per (column, header) of
    ``columns``, a row per (label, key) of ``rows``."""
    lines = ["| metric | " + " | ".join(columns.values()) + " |", "| --- " * (len(columns) + 1) + "|"]
    for label, key in rows.items():
        lines.append(
            f"| {label} | " + " | ".join(f"{metrics[f'{task}/{column}/{key}']:.3f}" for column in columns) + " |"
        )
    return "\n".join(lines)


def write_model_card(
    out: Path,
    metrics: dict[str, float],
    baselines: dict[str, float],
    *,
    command: str,
    config: LlamaConfig,
    num_params: int,
    num_rows: dict[str, int],
    steps: int,
    batch_sizes: tuple[int, int],
    lr: float,
    seed: int,
    threads: int,
    seconds: float,
) -> None:
    """Write the README.md model card next to the checkpoint."""
    date = datetime.date.today().isoformat()
    multiplication_table = markdown_table(
        metrics,
        "multiply",
        {"sampled": "sampled", "greedy": "greedy"},
        {
            "episodes that call the tool": "tool_rate",
            "reward": "reward",
            "reward of the episodes that call the tool": "reward_with_tool",
        },
    )
    guessing_table = markdown_table(
        {**metrics, **baselines},
        "guess",
        {"sampled": "sampled", "greedy": "greedy", "random": "consistent random search", "binary": "binary search"},
        {
            "mean guesses": "guesses",
            "mean reward": "reward",
            "games won": "found",
            "guesses consistent with the feedback": "consistent",
        },
    )
    card = f"""# agent-policy: warm-start policy for the multi-turn tool-using GRPO tasks

Produced by `scripts/make_agent_policy.py`; do not edit by hand.

- Command: `{command}`
- Date: {date} (training took {seconds:.0f} s on CPU, {threads} thread(s))
- Model: Llama decoder, random init from the seed ({num_params:,} parameters, float32, safetensors),
  hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads,
  {config.max_position_embeddings} positions
- Tokenizer: word level over every piece of text the two tasks render (words and punctuation with
  the space before them, single digits), decoded by joining the pieces, so decoding gives back the
  text exactly; ChatML chat template in Qwen2.5's tool format, with the tools as one system line
  (`Tools: multiply(a, b)`); end of turn and EOS `<|im_end|>`
- Tasks: `grpo_lightning.data.tasks.tool_arithmetic` (multiply with the `multiply` tool) and
  `grpo_lightning.data.tasks.guessing_game` (find a number from 1 to 15 with the `GuessingGame` environment)

## Supervised recipe

{steps} steps of AdamW (linear warm-up, cosine decay), each on {batch_sizes[0]} fresh multiplication
episodes and {batch_sizes[1]} fresh games, tokenized as the multi-turn rollout does: the chat
template's prompt, then per assistant turn its text and `<|im_end|>` (the only tokens with a
loss), then the tokens TRL's recipe inserts after a tool call (the tool response turn and the
next assistant header).

- Multiplication, drawn from the {num_rows["multiply"]} training rows: each time a problem is drawn,
  with probability {TOOL_RATE:.0%} the episode calls `multiply` with the prompt's factors and
  answers with the tool's result; otherwise it answers at once with a wrong product within
  {WRONG_SPREAD:.0%} of the right one. The policy calls the tool in a minority of its samples and is
  right when it does, while greedy decoding mostly answers directly: GRPO's task is to make the
  tool call the habit.
- Guessing game, secrets from the {num_rows["guess"]} training rows: each episode guesses a number
  drawn uniformly from those the feedback so far allows, until "correct" or out of guesses. The
  tokens that spell a guess are learned against that whole distribution rather than the number
  drawn (soft targets: the same optimum without the noise of single draws). The policy learns to
  read "higher"/"lower" but not to halve the range: GRPO can teach binary search.

Learning rate {lr:g}; torch deterministic algorithms, seed {seed}.

## Measured on held-out rows

Episodes played the way the rollout plays them (generate a turn until `<|im_end|>`, run its tool
calls, insert the results, repeat until a turn calls no tool or the game is done); sampled at
T=1.0 without top-k/top-p, {SAMPLES_PER_PROMPT} episodes per row, or greedy.

Multiplication, {num_rows["multiply/val"]} validation problems (reward: `math_answer` against `answer`):

{multiplication_table}

Guessing game, {num_rows["guess/val"]} validation games (every secret equally often; reward
`GuessingGame.get_reward`: 1 - (guesses - 1) / 6 if found, else 0), beside the search the
episodes were drawn from and binary search (simulated):

{guessing_table}
"""
    (out / "README.md").write_text(card)


def make_tokenizer_config_portable(out: Path) -> None:
    """Name the tokenizer class so that transformers 4.x loads the checkpoint too (as
    ``make_arith_checkpoint.py`` does: transformers 5 records ``TokenizersBackend``, which 4.x
    does not know)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("grpo_lightning/assets/agent-policy"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--arithmetic-batch-size", type=int, default=32)
    parser.add_argument("--guessing-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; the weights depend on it")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    chat = ChatFormat(tokenizer)
    arithmetic_train, arithmetic_val = tool_arithmetic.load_splits(seed=args.seed)
    guessing_train, guessing_val = guessing_game.load_splits(seed=args.seed)
    model = LlamaForCausalLM(model_config(tokenizer))
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{num_params:,} parameters, vocabulary of {len(tokenizer)}")

    start = time.perf_counter()
    train(
        model,
        chat,
        arithmetic_train,
        guessing_train,
        steps=args.steps,
        arithmetic_batch_size=args.arithmetic_batch_size,
        guessing_batch_size=args.guessing_batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start

    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    metrics = measure(model, chat, arithmetic_val, guessing_val, args.seed)
    baselines = search_baselines(args.seed)
    for name, value in {**metrics, **baselines}.items():
        print(f"{name}: {value:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out, save_jinja_files=False)  # the template in tokenizer_config.json
    make_tokenizer_config_portable(args.out)
    write_model_card(
        args.out,
        metrics,
        baselines,
        command=" ".join(["python", *sys.argv]),
        config=model.config,
        num_params=num_params,
        num_rows={
            "multiply": len(arithmetic_train),
            "multiply/val": len(arithmetic_val),
            "guess": len(guessing_train),
            "guess/val": len(guessing_val),
        },
        steps=args.steps,
        batch_sizes=(args.arithmetic_batch_size, args.guessing_batch_size),
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        seconds=seconds,
    )
    print(f"saved to {args.out} ({seconds:.0f} s of training)")


if __name__ == "__main__":
    main()
