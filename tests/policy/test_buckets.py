"""Length-bucketed scoring: when it splits, and that it changes no log-prob, entropy or gradient."""

import pytest
import torch

import grpo_lightning.policy.scoring.buckets as buckets_module
from grpo_lightning.policy.scoring.buckets import could_pay, length_buckets, scatter_rows, trim_padding
from grpo_lightning.types import TokenBatch


def _mask(lengths, width):
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


@pytest.fixture(autouse=True)
def free_calls(monkeypatch):
    """The hand counts below are in tokens; a call's fixed cost is tested on its own."""
    monkeypatch.setattr(buckets_module, "CALL_COST_TOKENS", 0)


def test_a_call_costs_tokens_so_tiny_batches_stay_one_block(monkeypatch):
    # Padded 8*(4+8) = 96 tokens; split 8*4 + 2*(1+1+1+8) = 54: 44 % less, with free calls.
    prompt_mask, completion_mask = torch.ones(8, 4, dtype=torch.long), _mask([1] * 6 + [8] * 2, 8)
    assert length_buckets(prompt_mask, completion_mask, max_buckets=4) is not None
    monkeypatch.setattr(buckets_module, "CALL_COST_TOKENS", 64)  # 96 + 64 against 54 + 4*64
    assert length_buckets(prompt_mask, completion_mask, max_buckets=4) is None


def test_blocks_too_small_to_repay_the_calls_are_not_examined(monkeypatch):
    monkeypatch.setattr(buckets_module, "CALL_COST_TOKENS", 256)
    # 4 calls cost 1024 tokens' worth: the block must cost at least 1024 / 0.75 = 1366.
    assert not could_pay(num_rows=32, prompt_columns=7, completion_columns=8, max_buckets=4)  # 480 + 256
    assert could_pay(num_rows=32, prompt_columns=7, completion_columns=40, max_buckets=4)  # 1504 + 256
    assert not could_pay(num_rows=32, prompt_columns=7, completion_columns=40, max_buckets=1)
    assert not could_pay(num_rows=1, prompt_columns=7, completion_columns=4000, max_buckets=4)


def test_near_uniform_lengths_stay_one_block():
    prompt_mask = torch.ones(8, 4, dtype=torch.long)
    # Sorted 5,5,6,6,7,7,8,8 in 4 groups: 2*(5+6+7+8) + 8*4 = 84 of 8*(4+8) = 96 tokens: 12 % saved.
    assert length_buckets(prompt_mask, _mask([8, 5, 6, 7, 8, 5, 6, 7], 8), max_buckets=4) is None
    assert length_buckets(prompt_mask, _mask([1] * 6 + [8] * 2, 8), max_buckets=1) is None


def test_long_tailed_lengths_split_into_sorted_groups_covering_every_row_once():
    prompt_mask = torch.ones(8, 4, dtype=torch.long)
    lengths = [8, 1, 2, 1, 8, 2, 1, 1]
    groups = length_buckets(prompt_mask, _mask(lengths, 8), max_buckets=4)
    assert groups is not None and sorted(torch.cat(groups).tolist()) == list(range(8))
    group_lengths = [[lengths[row] for row in group.tolist()] for group in groups]
    assert group_lengths == [[1, 1], [1, 1], [2, 2], [8, 8]]


def test_a_shared_prompt_counts_once_per_bucket_it_lands_in():
    # 8 rows, completions [8, 1, 2, 1, 8, 2, 1, 1]; rows 0-3 share prompt A, rows 4-7 prompt B,
    # 32 tokens each. Padded, each prompt once: 2*32 + 8*8 = 128 tokens. Split: the groups
    # {1, 3} (A), {6, 7} (B), {2, 5} (A, B), {0, 4} (A, B) run 6 prompts: 6*32 + 2*(1+1+2+8) = 216.
    prompt_mask = torch.ones(8, 32, dtype=torch.long)
    completion_mask = _mask([8, 1, 2, 1, 8, 2, 1, 1], 8)
    shared = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert length_buckets(prompt_mask, completion_mask, 4, prompt_of_row=shared) is None
    # Unshared, every row its own prompt: 8*(32+8) = 320 padded, 8*32 + 24 = 280 split: 12.5 %.
    assert length_buckets(prompt_mask, completion_mask, 4) is None
    # Short prompts: 8*(2+8) = 80 padded, 8*2 + 24 = 40 split.
    assert length_buckets(torch.ones(8, 2, dtype=torch.long), completion_mask, 4, prompt_of_row=shared) is not None


def test_trim_padding_drops_all_padding_columns_only():
    prompt_ids = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    completion_ids = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    ids, mask, out_ids, out_mask = trim_padding(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out_ids.tolist() == [[1, 2], [3, 0]] and out_mask.tolist() == [[1, 1], [1, 0]]


def test_scatter_rows_places_parts_and_passes_gradients():
    first = torch.tensor([[1.0, 2.0]], requires_grad=True)
    second = torch.tensor([[3.0], [4.0]], requires_grad=True)
    out = scatter_rows([(torch.tensor([2]), first), (torch.tensor([0, 1]), second)], num_rows=3, num_columns=3)
    assert out.tolist() == [[3.0, 0, 0], [4.0, 0, 0], [1.0, 2.0, 0]]
    (out * torch.arange(9.0).view(3, 3)).sum().backward()
    assert first.grad.tolist() == [[6.0, 7.0]] and second.grad.tolist() == [[0.0], [3.0]]


@pytest.mark.parametrize("share_prompts", [False, True])
@pytest.mark.parametrize("chunked_lm_head", [True, False])
def test_bucketed_scores_and_gradients_equal_the_padded_pass(arith_policy, share_prompts, chunked_lm_head):
    policy = arith_policy
    policy.share_prompts, policy.chunked_lm_head = share_prompts, chunked_lm_head
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6=", "90+9=", "1+1="])
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(2, 0), prompt_mask.repeat_interleave(2, 0)
    lengths = [1, 12, 2, 1, 12, 1, 2, 1]
    completion_mask = _mask(lengths, 12)
    torch.manual_seed(0)
    completion_ids = torch.randint(3, 14, (8, 12)) * completion_mask
    batch = TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)

    def scores(buckets):
        policy.length_buckets = buckets
        policy.model.zero_grad()
        logprobs, entropy = policy.logprobs_and_entropy(batch, temperature=0.7, with_entropy=True)
        ((logprobs + entropy) * completion_mask).sum().backward()
        grads = [p.grad.clone() for p in policy.model.parameters()]
        return logprobs * completion_mask, entropy * completion_mask, grads

    policy.length_buckets = 4
    assert policy._length_buckets(batch) is not None, "this batch should be split"
    (padded_lp, padded_ent, padded_grads), (split_lp, split_ent, split_grads) = scores(1), scores(4)
    torch.testing.assert_close(split_lp, padded_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split_ent, padded_ent, rtol=1e-5, atol=1e-5)
    for split, padded in zip(split_grads, padded_grads):
        torch.testing.assert_close(split, padded, rtol=1e-4, atol=1e-5)


def test_sharded_strategies_score_one_block_and_refuse_an_explicit_split(compose_config, random_arith_dir):
    from grpo_lightning.config import ConfigError, to_train_config

    model = f"model.name_or_path={random_arith_dir}"
    assert to_train_config(compose_config(model)).model.length_buckets == 4
    assert to_train_config(compose_config(model, "trainer.strategy=fsdp")).model.length_buckets == 1
    with pytest.raises(
        ConfigError,
        match=r"model.length_buckets=4 with trainer.strategy=deepspeed_stage_3.*same "
        r"forward",
    ):
        to_train_config(compose_config(model, "trainer.strategy=deepspeed_stage_3", "model.length_buckets=4"))
    # ZeRO-2 keeps whole weights on every process: its forward calls are its own.
    assert to_train_config(compose_config(model, "trainer.strategy=deepspeed_stage_2")).model.length_buckets == 4
    with pytest.raises(ConfigError, match=r"model.length_buckets must be >= 1 or null, .*\(got 0\)"):
        to_train_config(compose_config(model, "model.length_buckets=0"))
