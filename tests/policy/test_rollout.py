"""Completion masks and the G-per-prompt rollout layout."""

import torch

from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.rollout import completion_mask_from_eos, generate_rollout


def test_mask_runs_through_first_eos_even_when_pad_is_eos():
    eos = 2
    ids = torch.tensor(
        [
            [5, 2, 2, 2],  # EOS then EOS-as-pad
            [5, 6, 7, 8],  # no EOS: truncated
            [2, 2, 2, 2],
        ]
    )  # immediate EOS
    mask, truncated = completion_mask_from_eos(ids, [eos])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_several_eos_ids():
    mask, truncated = completion_mask_from_eos(torch.tensor([[4, 9, 1]]), [9, 1])
    assert mask.tolist() == [[1, 1, 0]]
    assert truncated.tolist() == [False]


def test_rollout_layout(arith_policy):
    rollout = generate_rollout(
        arith_policy,
        ["12+34=", "10+10="],
        {"answer": ["46", "20"]},
        group_size=3,
        sampling=SamplingParams(max_new_tokens=4),
    )
    assert rollout.prompts == ["12+34="] * 3 + ["10+10="] * 3
    assert rollout.columns == {"answer": ["46"] * 3 + ["20"] * 3}
    assert rollout.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.tokens.completion_ids.shape[0] == 6
    assert rollout.tokens.completion_ids.shape[1] <= 4
    assert len(rollout.completions) == 6
    assert ((rollout.lengths >= 1) & (rollout.lengths <= 4)).all()
