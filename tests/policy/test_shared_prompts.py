"""Scoring each distinct prompt once (model.share_prompts) gives the full pass's numbers."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from grpo_lightning.config import ConfigError
from grpo_lightning.policy.scoring.logprobs import (
    completion_logprobs,
    completion_logprobs_from_hidden,
    distinct_prompts,
)

SIZES = dict(vocab_size=23, hidden_size=16, intermediate_size=32, num_hidden_layers=2, max_position_embeddings=64)


def _model(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(num_attention_heads=2, num_key_value_heads=2, **SIZES))
    # Qwen2: biases on q/k/v and grouped-query attention (4 query heads share 2 key/value heads)
    return Qwen2ForCausalLM(Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **SIZES))


def _grouped_batch(num_prompts=3, group_size=4, prompt_length=6, completion_length=5):
    """Left-padded prompts, each repeated group_size times, rows shuffled; right-padded completions."""
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 23, (num_prompts, prompt_length), generator=gen)
    prompt_mask = torch.ones_like(prompts)
    for row in range(num_prompts):
        prompt_mask[row, :row] = 0  # prompt i is left-padded by i tokens
        prompts[row, :row] = 0
    prompts, prompt_mask = prompts.repeat_interleave(group_size, 0), prompt_mask.repeat_interleave(group_size, 0)
    rows = num_prompts * group_size
    completions = torch.randint(3, 23, (rows, completion_length), generator=gen)
    completion_mask = torch.ones_like(completions)
    for row in range(rows):
        completion_mask[row, 1 + row % completion_length :] = 0
    order = torch.randperm(rows, generator=gen)  # groups need not be contiguous (mini-batches)
    return [t[order] for t in (prompts, prompt_mask, completions, completion_mask)]


def _scores_and_grads(model, scorer, batch, share_prompts):
    model.zero_grad()
    logprobs, entropy = scorer(model, *batch, temperature=0.7, with_entropy=True, share_prompts=share_prompts)
    mask = batch[3]
    ((logprobs * mask).sum() + (entropy * mask).sum()).backward()
    return logprobs * mask, entropy * mask, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("scorer", [completion_logprobs_from_hidden, completion_logprobs])
def test_shared_prompt_scores_and_gradients_match_the_full_pass(family, scorer):
    model, batch = _model(family), _grouped_batch()
    full_lp, full_ent, full_grads = _scores_and_grads(model, scorer, batch, share_prompts=False)
    lp, ent, grads = _scores_and_grads(model, scorer, batch, share_prompts=True)
    torch.testing.assert_close(lp, full_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, full_ent, rtol=1e-5, atol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def _decoder_inputs(model, batch, share_prompts):
    """The (rows, positions) of every decoder call while scoring the batch."""
    shapes = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        completion_logprobs_from_hidden(model, *batch, share_prompts=share_prompts)
    hook.remove()
    return shapes


def test_each_distinct_prompt_is_run_once():
    model, batch = _model("llama"), _grouped_batch(num_prompts=3, group_size=4, prompt_length=6, completion_length=5)
    assert _decoder_inputs(model, batch, share_prompts=False) == [(12, 11)]
    assert _decoder_inputs(model, batch, share_prompts=True) == [(3, 6), (12, 5)]


def test_batches_without_repeated_prompts_take_one_full_pass():
    model, batch = _model("llama"), _grouped_batch(num_prompts=3, group_size=1)
    assert distinct_prompts(batch[0], batch[1]) is None
    assert _decoder_inputs(model, batch, share_prompts=True) == [(3, 11)]


def test_prompts_with_the_same_ids_but_different_padding_are_distinct():
    ids = torch.tensor([[0, 5], [0, 5], [0, 5]])  # id 0 is both padding and a real token here
    mask = torch.tensor([[0, 1], [1, 1], [0, 1]])
    unique_ids, unique_mask, prompt_of_row = distinct_prompts(ids, mask)
    assert unique_ids.shape == (2, 2)
    assert torch.equal(unique_mask[prompt_of_row], mask) and torch.equal(unique_ids[prompt_of_row], ids)


def test_policy_shares_prompts_unless_gradient_checkpointing(random_arith_dir):
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    def policy(**fields):
        return CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir), **fields))

    assert policy().share_prompts is True
    assert policy(gradient_checkpointing=True).share_prompts is False
    assert policy(share_prompts=False).share_prompts is False


def test_sharing_under_gradient_checkpointing_is_refused_at_load(compose_config):
    from grpo_lightning.config import to_train_config

    cfg = compose_config("model.share_prompts=true", "model.gradient_checkpointing=true")
    with pytest.raises(ConfigError, match="model.share_prompts=true needs the KV cache"):
        to_train_config(cfg)
