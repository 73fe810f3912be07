"""The agentic tasks (tool arithmetic, guessing game) and the shipped agent-policy's tokenizer,
chat template and model, checked against hand-written expectations."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import get_json_schema

from grpo_lightning.config.loading import asset_path
from grpo_lightning.data.tasks import guessing_game, tool_arithmetic
from grpo_lightning.data.tasks.guessing_game import GAME_OVER, GuessingGame
from grpo_lightning.data.tasks.tool_arithmetic import multiply
from grpo_lightning.rewards.math import math_answer

MULTIPLY_CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 37, "b": 64}}</tool_call>'
GUESS_CALL = '<tool_call>{"name": "guess", "arguments": {"number": 8}}</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(asset_path("agent-policy"))


def guess_schema() -> dict:
    return get_json_schema(GuessingGame().guess)


def inserted_ids(tokenizer, tool_name: str, tool_messages: list[dict]) -> list[int]:
    """The ids the rollout inserts after a tool-calling turn, TRL's way: a dummy conversation
    rendered with the tool messages (and the next assistant header), less its rendering without
    them, cut after its last end of turn."""
    dummy = [
        {"role": "user", "content": "dummy"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": tool_name, "arguments": {}}}],
        },
    ]
    prefix = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, return_dict=False)
    prefix = prefix[: len(prefix) - prefix[::-1].index(tokenizer.eos_token_id)]
    full = tokenizer.apply_chat_template(
        dummy + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert full[: len(prefix)] == prefix
    return full[len(prefix) :]


def test_tool_arithmetic_splits_are_deterministic_disjoint_and_right():
    train, val = tool_arithmetic.load_splits(num_train=7000, num_val=100, seed=3)
    assert (train, val) == tool_arithmetic.load_splits(num_train=7000, num_val=100, seed=3)
    assert train != tool_arithmetic.load_splits(num_train=7000, num_val=100, seed=4)[0]
    assert len(train) == 7000 and len(val) == 100
    assert {row["prompt"] for row in train}.isdisjoint(row["prompt"] for row in val)
    for row in train[:50] + val:
        a, b = map(int, re.fullmatch(r"What is (\d\d) \* (\d\d)\?", row["prompt"]).groups())
        assert row["answer"] == str(a * b)
    assert val == tool_arithmetic.load_splits(num_train=10, num_val=100, seed=3)[1]  # val does not move with num_train
    with pytest.raises(ValueError):
        tool_arithmetic.load_splits(num_train=8000, num_val=101)


def test_math_answer_is_the_tool_arithmetic_reward():
    prompts = ["What is 37 * 64?"] * 3
    assert math_answer(prompts, ["2368", "37 * 64 = 2412", "37 * 64 = 2368"], answer=["2368"] * 3) == [1.0, 0.0, 1.0]


def test_multiply_is_a_tool_by_the_trl_contract():
    assert multiply(37, 64) == 2368
    assert get_json_schema(multiply) == {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "The first factor."},
                    "b": {"type": "integer", "description": "The second factor."},
                },
                "required": ["a", "b"],
            },
            "return": {"type": "integer", "description": "The product a * b."},
        },
    }


def test_guessing_splits_are_deterministic_and_validation_covers_every_secret_equally():
    train, val = guessing_game.load_splits(num_train=500, num_val=45, seed=1)
    assert (train, val) == guessing_game.load_splits(num_train=500, num_val=45, seed=1)
    assert train != guessing_game.load_splits(num_train=500, num_val=45, seed=2)[0]
    assert {row["secret"] for row in train} == set(range(1, 16))
    assert sorted(row["secret"] for row in val) == sorted(list(range(1, 16)) * 3)
    assert {row["prompt"] for row in train + val} == {"I'm thinking of a number from 1 to 15. Find it."}


def test_guess_is_the_environments_only_tool():
    game = GuessingGame()
    public = [name for name in dir(game) if not name.startswith("_") and callable(getattr(game, name))]
    assert public == ["get_reward", "guess", "reset"]  # TRL: every public method but reset/get_reward is a tool
    schema = guess_schema()["function"]
    assert schema["name"] == "guess"
    assert schema["parameters"]["properties"]["number"]["type"] == "integer"
    assert schema["parameters"]["required"] == ["number"]


@pytest.mark.parametrize(
    ("secret", "guesses", "feedback", "reward"),
    [
        (8, [8], ["correct"], 1.0),
        (4, [8, 2, 4], ["lower", "higher", "correct"], 1 - 2 / 6),
        (15, [8, 12, 14, 15], ["higher", "higher", "higher", "correct"], 0.5),
        (1, [9, 8, 7, 6, 5, 1], ["lower"] * 5 + ["correct"], 1 / 6),
        (1, [9, 8, 7, 6, 5, 4], ["lower"] * 6, 0.0),
    ],
)
def test_guessing_game_feedback_end_and_reward(secret, guesses, feedback, reward):
    game = GuessingGame()
    assert game.reset(secret=str(secret), prompt=guessing_game.PROMPT) == " You have 6 guesses."
    assert not game.done and game.get_reward() == 0.0
    assert [game.guess(number) for number in guesses] == feedback
    assert game.done
    assert game.get_reward() == pytest.approx(reward)
    assert game.guess(secret) == GAME_OVER and len(game.guesses) == len(guesses)  # a finished game counts no more
    game.reset(secret=secret)
    assert not game.done and game.guesses == []


@pytest.mark.parametrize(
    ("turns", "secret", "guesses", "reward"),
    [
        (["call"], 8, [8], 1.0),  # found at the first turn
        (["malformed", "call"], 8, [8], 1 - 1 / 6),  # a wasted turn costs what a wrong guess does
        (["call", "malformed", "malformed", "call"], 4, [8, 4], 1 - 3 / 6),
        (["call", "answer"], 4, [8], -1 / 6),  # not found: the game's 0, less the wasted turn
    ],
)
def test_the_preset_reward_counts_every_turn(turns, secret, guesses, reward):
    """agent_guessing's reward (the game's plus wasted_turns): 1 - (turns - 1) / 6 when found."""
    game = GuessingGame()
    game.reset(secret=secret)
    for number in guesses:
        game.guess(number)
    messages = [{"role": "user", "content": guessing_game.PROMPT}]
    for turn in turns:
        messages.append({"role": "assistant", "content": turn})
        if turn != "answer":
            messages.append({"role": "tool", "content": "..."})
    total = game.get_reward() + guessing_game.wasted_turns(conversations=[messages], environments=[game])[0]
    assert total == pytest.approx(reward)


@pytest.mark.parametrize(
    ("turns", "secret", "expected"),
    [
        ([8], 8, [1.0]),
        (["malformed", 8], 8, [-1 / 6, 1.0]),
        ([8, "malformed", 2, 4], 4, [-1 / 6, -1 / 6, -1 / 6, 1.0]),  # a found number: 1 - (turns - 1) / 6 in all
        ([8, "answer"], 4, [-1 / 6, -1 / 6]),
    ],
)
def test_turn_rewards_credit_the_turn_that_finds_the_number(turns, secret, expected):
    game = GuessingGame()
    game.reset(secret=secret)
    messages = [{"role": "user", "content": guessing_game.PROMPT}]
    for turn in turns:
        messages.append({"role": "assistant", "content": ""})
        if isinstance(turn, int):
            messages.append({"role": "tool", "name": "guess", "content": game.guess(turn)})
        elif turn == "malformed":
            messages.append({"role": "tool", "name": "error", "content": "error: malformed tool call"})
    rewards = guessing_game.turn_rewards(conversations=[messages], environments=[game])
    assert rewards == [pytest.approx(expected)]


def test_every_number_is_spelled_digit_by_digit(tokenizer):
    assert tokenizer.tokenize("1234567890") == list("1234567890")
    assert tokenizer.unk_token_id not in tokenizer("-9876543210", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "turn",
    [MULTIPLY_CALL, GUESS_CALL, '<tool_call>\n{"name": "multiply", "arguments": {"a": 10, "b": 99}}\n</tool_call>'],
)
def test_a_tool_call_turn_decodes_to_the_same_call(tokenizer, turn):
    ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    for skip_special_tokens in (False, True):
        decoded = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert decoded == turn
        (call,) = re.findall(r"<tool_call>(.*?)</tool_call>", decoded, re.DOTALL)
        assert json.loads(call) == json.loads(re.search(r"<tool_call>(.*?)</tool_call>", turn, re.DOTALL)[1])


def test_the_end_of_turn_token_is_eos_everywhere(tokenizer):
    model = LlamaForCausalLM.from_pretrained(asset_path("agent-policy"))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id == end_of_turn
    assert model.config.vocab_size == len(tokenizer)


def test_the_template_renders_the_tools_line_and_the_prompt(tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 37 * 64?"}],
        tools=[get_json_schema(multiply)],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == (
        "<|im_start|>system\nTools: multiply(a, b)<|im_end|>\n"
        "<|im_start|>user\nWhat is 37 * 64?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    two_tools = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tools=[get_json_schema(multiply), guess_schema()],
        tokenize=False,
    )
    assert two_tools.startswith("<|im_start|>system\nBe brief.\nTools: multiply(a, b) guess(number)<|im_end|>\n")
    assert two_tools.count("<|im_start|>system") == 1


def test_the_template_renders_calls_and_tool_responses_qwen_style(tokenizer):
    conversation = [
        {"role": "user", "content": "What is 37 * 64?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 37, "b": 64}}}],
        },
        {"role": "tool", "name": "multiply", "content": "2368"},
        {"role": "assistant", "content": "2368"},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>user\nWhat is 37 * 64?<|im_end|>\n"
        f"<|im_start|>assistant\n{MULTIPLY_CALL}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>2368</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n2368<|im_end|>\n"
    )


def test_inserted_ids_and_the_rollouts_pieces_make_the_rendered_episode(tokenizer):
    inserted = inserted_ids(tokenizer, "multiply", [{"role": "tool", "name": "multiply", "content": "2368"}])
    assert tokenizer.decode(inserted) == (
        "\n<|im_start|>user\n<tool_response>2368</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    two_results = inserted_ids(
        tokenizer, "guess", [{"role": "tool", "name": "guess", "content": c} for c in ("lower", "higher")]
    )
    assert tokenizer.decode(two_results) == (
        "\n<|im_start|>user\n<tool_response>lower</tool_response><tool_response>higher</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )

    # prompt ids, then per turn its ids and EOS, with the inserted ids between turns: the whole
    # episode exactly as the template renders it (less the newline after the last turn).
    messages = [{"role": "user", "content": "What is 37 * 64?"}]
    tools = [get_json_schema(multiply)]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for turn, following in ((MULTIPLY_CALL, inserted), ("2368", [])):
        ids += tokenizer(turn, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] + following
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 37, "b": 64}}}
    conversation = messages + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "multiply", "content": "2368"},
        {"role": "assistant", "content": "2368"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
    assert ids == tokenizer(rendered.removesuffix("\n"), add_special_tokens=False)["input_ids"]


def test_the_vocabulary_covers_every_prompt_of_both_tasks(tokenizer):
    arithmetic_rows = sum(tool_arithmetic.load_splits(), [])
    guessing_rows = sum(guessing_game.load_splits(num_train=15, num_val=15), [])
    tools = {"arithmetic": [get_json_schema(multiply)], "guessing": [guess_schema()]}
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}],
            tools=tools["arithmetic"],
            add_generation_prompt=True,
            tokenize=False,
        )
        for row in arithmetic_rows
    ]
    for row in guessing_rows:
        observation = GuessingGame().reset(**row)
        messages = [{"role": "user", "content": row["prompt"] + observation}]
        texts.append(
            tokenizer.apply_chat_template(messages, tools=tools["guessing"], add_generation_prompt=True, tokenize=False)
        )
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert all(tokenizer.unk_token_id not in ids for ids in encoded)
    assert all(tokenizer.decode(ids) == text for ids, text in zip(encoded[::97], texts[::97]))


def test_the_shipped_policy_opens_a_game_with_a_well_formed_guess(tokenizer):
    model = LlamaForCausalLM.from_pretrained(asset_path("agent-policy"))
    row = guessing_game.load_splits(num_train=1, num_val=1)[1][0]
    messages = [{"role": "user", "content": row["prompt"] + GuessingGame().reset(**row)}]
    prompt = tokenizer.apply_chat_template(messages, tools=[guess_schema()], add_generation_prompt=True, tokenize=False)
    input_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=40)
    turn = output[0, input_ids.shape[1] :].tolist()
    assert turn[-1] == tokenizer.eos_token_id
    (call,) = re.findall(r"<tool_call>(.*?)</tool_call>", tokenizer.decode(turn[:-1]), re.DOTALL)
    call = json.loads(call)
    assert call["name"] == "guess" and 1 <= call["arguments"]["number"] <= 15
