"""Built-in rewards (math answer, format, overlong penalty, reward model) and pass@k."""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.algo.pass_at_k import pass_at_k
from grpo_lightning.config import ConfigError, RewardConfig, RewardFunctionConfig
from grpo_lightning.rewards import WeightedReward, format_reward, length_penalty, math_answer
from grpo_lightning.rewards.math import final_answer, parse_number


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("Natalia sold 48 + 24 = 72 clips. #### 72", "She sold 48/2 = 24 in May. #### 72", 1.0),  # GSM8K both sides
        ("The answer is \\boxed{72}.", "72", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("So x = \\boxed{-12}", "#### -12", 1.0),
        ("It costs $1,234.", "1234", 1.0),  # commas and currency
        ("total: 1,234,567", "#### 1234567", 1.0),
        ("The temperature is -3 degrees", "-3", 1.0),  # last number, negative
        ("<think>2+2</think><answer> 4 </answer>", "4", 1.0),
        ("First 10, then 20, finally 30.", "30", 1.0),
        ("First 10, then 20, finally 30.", "20", 0.0),  # only the final number counts
        ("I think it is 41", "42", 0.0),
        ("no number at all", "42", 0.0),  # malformed completions
        ("\\boxed{", "42", 0.0),
        ("#### ", "42", 0.0),
        ("", "42", 0.0),
        ("\\boxed{x^2}", "x^2", 1.0),  # a non-numeric reference compares as text
    ],
)
def test_math_answer(completion, reference, expected):
    assert math_answer(["p"], [completion], answer=[reference]) == [expected]


def test_math_answer_without_reference_is_not_applicable():
    assert math_answer(["p", "p"], ["1", "2"], answer=[None, "2"]) == [None, 1.0]


def test_number_parsing_edge_cases():
    assert parse_number("1/0") is None
    assert parse_number("0.5") == parse_number("1/2")
    assert float(parse_number("-.5")) == -0.5
    assert final_answer("\\boxed{a} then \\boxed{b}") == "b"


def test_format_reward_default_and_custom_pattern():
    completions = [
        "<think>\nstep\n</think>\n<answer>7</answer>\n",
        "<answer>7</answer><think>x</think>",
        "<think>x</think>",
        "no tags",
    ]
    assert format_reward(["p"] * 4, completions) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(["p", "p"], ["#### 7", "7"], pattern=r".*#### -?\d+") == [1.0, 0.0]


def test_length_penalty_is_dapo_soft_overlong_in_chars_and_tokens(random_arith_dir):
    # L_max = 8, L_cache = 4: no penalty up to 4, linear to -1 at 8, -1 beyond.
    texts = ["1" * n for n in (3, 4, 5, 6, 8, 9)]
    assert length_penalty(["p"] * 6, texts, max_length=8, cache_length=4) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    # The char tokenizer gives one token per character (no BOS: add_special_tokens=False).
    assert length_penalty(["p"] * 6, texts, max_length=8, cache_length=4, tokenizer=str(random_arith_dir)) == [
        0.0,
        0.0,
        -0.25,
        -0.5,
        -1.0,
        -1.0,
    ]
    with pytest.raises(ValueError, match="cache_length"):
        length_penalty(["p"], ["x"], max_length=4, cache_length=8)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from grpo_lightning.data.tasks.arithmetic import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_reward_model_scores_in_batches_without_grad(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from grpo_lightning.rewards.reward_model import RewardModel

    prompts, completions = ["1+2=", "12+34=", "5+5="], ["3", "46", "1"]
    scores = RewardModel(str(reward_model_dir), batch_size=2)(prompts, completions)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    expected = [
        model(**tokenizer([p + c], return_tensors="pt")).logits[0, 0].item() for p, c in zip(prompts, completions)
    ]
    assert scores == pytest.approx(expected, abs=1e-5)  # padding inside a batch does not change a score
    with pytest.raises(ConfigError, match="label=3"):
        RewardModel(str(reward_model_dir), label=3)
    with pytest.raises(ConfigError, match="no config.json"):
        RewardModel("/nonexistent/rm")


def test_reward_model_from_config_weighted_with_rules(reward_model_dir):
    cfg = RewardConfig(
        functions={
            "rm": RewardFunctionConfig(
                fn="grpo_lightning.rewards.reward_model.RewardModel",
                weight=0.5,
                kwargs={"name_or_path": str(reward_model_dir)},
            ),
            "math": RewardFunctionConfig(fn="grpo_lightning.rewards.math.math_answer", weight=1.0),
        }
    )
    reward = WeightedReward.from_config(cfg)
    scores = reward(["1+2=", "2+2="], ["3", "5"], {"answer": ["3", "4"]})
    torch.testing.assert_close(scores.total, 0.5 * scores.per_function["rm"] + torch.tensor([1.0, 0.0]))
    bad = RewardConfig(
        functions={
            "rm": RewardFunctionConfig(fn="grpo_lightning.rewards.reward_model.RewardModel", kwargs={"path": "x"})
        }
    )
    with pytest.raises(ConfigError, match="reward.functions.rm.kwargs"):
        WeightedReward.from_config(bad)


def test_weighted_reward_moves_model_rewards_to_the_device():
    moved = []

    class Learned:
        def to(self, device):
            moved.append(device)

        def __call__(self, prompts, completions, **columns):
            return [0.0] * len(completions)

    reward = WeightedReward({"learned": (Learned(), 1.0)})
    reward(["p"], ["c"], {}, device="cpu")
    reward(["p"], ["c"], {}, device="meta")
    reward(["p"], ["c"], {}, device="meta")
    assert moved == [torch.device("meta")]  # cpu is where it starts; moved once, not per call


def test_pass_at_k_hand_computed():
    passed = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    # 1 - C(n - c, k) / C(n, k) with n = 4, k = 2: C(3,2)/C(4,2) = 3/6, C(2,2)/6 = 1/6.
    torch.testing.assert_close(pass_at_k(passed, 2), torch.tensor([0.5, 5 / 6, 0.0, 1.0]))
    torch.testing.assert_close(pass_at_k(passed, 4), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(pass_at_k(passed, 1), torch.tensor([0.25, 0.5, 0.0, 1.0]))
    with pytest.raises(ValueError):
        pass_at_k(passed, 5)
