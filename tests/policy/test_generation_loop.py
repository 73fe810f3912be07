"""The lean KV-cache sampling loop against transformers' generate, token for token, and its draw."""

import pytest
import torch
from transformers import GenerationConfig

import grpo_lightning.policy.generation.loop as generation_loop
from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.generation.loop import (
    LOOP_MODEL_TYPES,
    draw_tokens,
    filter_logits,
    inverse_cdf,
    sample_with_kv_cache,
    supports_generation_loop,
)


@pytest.fixture
def multinomial_draw(monkeypatch):
    """The loop drawing as generate does, so that the same seed gives the same tokens."""
    monkeypatch.setattr(
        generation_loop,
        "draw_tokens",
        lambda scores, generator=None: torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1),
    )


def test_inverse_cdf_by_hand():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.2, 0.3, 0.5, 0.0]])
    # target = (1 - u) * total; the first token whose cumulative probability reaches it
    for uniform, expected in [
        ((0.0, 0.0), (3, 2)),  # target = total: the last token with mass
        ((0.5, 0.5), (1, 1)),  # 0.5 reaches token 1's bucket end exactly
        ((0.6, 0.85), (1, 0)),
        ((1 - 1e-12, 1 - 1e-12), (1, 0)),
    ]:  # target just above 0: never a zero token
        drawn = inverse_cdf(probs.double().cumsum(dim=-1), torch.tensor(uniform, dtype=torch.float64))
        assert drawn.tolist() == list(expected), uniform


def test_draw_tokens_follows_each_rows_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 0.9, 0.0, 0.1]])
    draws = 50_000
    tokens = draw_tokens(probs.log().repeat(draws, 1)).view(draws, 2)  # [draws, 2]; log 0 = -inf
    for row in range(2):
        frequency = torch.bincount(tokens[:, row], minlength=5).double() / draws
        sigma = (probs[row].double() * (1 - probs[row].double()) / draws).sqrt()
        assert (frequency - probs[row].double()).abs().le(5 * sigma + 1e-12).all(), (row, frequency)
        assert frequency[probs[row] == 0].eq(0).all()


def test_draw_tokens_in_row_blocks_gives_the_same_tokens(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(7, 50, generator=generator)
    scores[2, :45] = float("-inf")  # a filtered row
    torch.manual_seed(0)
    whole = draw_tokens(scores)
    monkeypatch.setitem(generation_loop.DRAW_CHUNK_BYTES, "cpu", 3 * 50 * 8)  # blocks of 3, 3 and 1 rows
    torch.manual_seed(0)
    assert draw_tokens(scores).tolist() == whole.tolist()
    assert whole[2] >= 45
    assert draw_tokens(scores[:0]).shape == (0,)


@pytest.mark.parametrize("do_sample", [True, False])
def test_non_finite_logits_stop_sampling_with_a_clear_error(arith_policy, do_sample):
    policy = arith_policy
    model = policy.model.eval()
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6="])
    head = model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head[3] = float("nan")  # one vocabulary row: every distribution is NaN
        with pytest.raises(FloatingPointError, match=r"not finite .* in 2 of 2 rows at new token 1"):
            sample_with_kv_cache(
                model,
                prompt_ids,
                prompt_mask,
                max_new_tokens=4,
                do_sample=do_sample,
                eos_token_ids=policy.eos_token_ids,
                pad_token_id=policy.tokenizer.pad_token_id,
            )
    finally:
        with torch.no_grad():
            head.copy_(saved)


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = filter_logits(logits, 1.0, top_k=2, top_p=1.0)
    assert torch.isinf(top_k[0, 2:]).all() and torch.isfinite(top_k[0, :2]).all()
    # top_p=0.7: the tail {0.05, 0.15} has mass 0.2 <= 0.3 and goes; 0.3 would push it to 0.5 > 0.3
    top_p = filter_logits(logits, 1.0, top_k=0, top_p=0.7)
    assert torch.isfinite(top_p[0, :2]).all() and torch.isinf(top_p[0, 2:]).all()
    torch.testing.assert_close(filter_logits(logits, 2.0, 0, 1.0), logits / 2)


@pytest.mark.parametrize(
    "do_sample,top_k,top_p,temperature", [(True, 0, 1.0, 1.0), (True, 5, 0.9, 0.7), (False, 0, 1.0, 1.0)]
)
def test_loop_matches_generate_for_the_same_seed(arith_policy, multinomial_draw, do_sample, top_k, top_p, temperature):
    policy = arith_policy
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6=", "78+9="])
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(4, 0), prompt_mask.repeat_interleave(4, 0)
    torch.manual_seed(3)
    loop = sample_with_kv_cache(
        policy.model.eval(),
        prompt_ids,
        prompt_mask,
        max_new_tokens=6,
        eos_token_ids=policy.eos_token_ids,
        pad_token_id=policy.tokenizer.pad_token_id,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    torch.manual_seed(3)
    generated = policy.model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        generation_config=GenerationConfig(
            max_new_tokens=6,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=top_k if do_sample else None,
            top_p=top_p if do_sample else None,
            eos_token_id=policy.eos_token_ids,
            pad_token_id=policy.tokenizer.pad_token_id,
        ),
    )
    torch.testing.assert_close(loop, generated[:, prompt_ids.size(1) :], rtol=0, atol=0)


def test_loop_prefills_each_distinct_prompt_once(arith_policy):
    policy = arith_policy
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6=", "78+9="])  # [3, P]
    calls = []
    hook = policy.model.get_input_embeddings().register_forward_pre_hook(
        lambda _, args: calls.append(tuple(args[0].shape))
    )
    for group_size in (4, 1):
        torch.manual_seed(0)
        sample_with_kv_cache(
            policy.model.eval(),
            prompt_ids.repeat_interleave(group_size, 0),
            prompt_mask.repeat_interleave(group_size, 0),
            max_new_tokens=3,
            eos_token_ids=[],
            pad_token_id=policy.tokenizer.pad_token_id,
        )
    hook.remove()
    rows, length = 3 * 4, prompt_ids.size(1)
    # 3 prompts x 4 rows: the prompts run once, then 12 rows decode one token per call
    assert calls[:3] == [(3, length), (rows, 1), (rows, 1)]
    assert calls[3:] == [(3, length), (3, 1), (3, 1)]


def test_loop_stops_when_every_row_has_eos(arith_policy):
    policy = arith_policy
    eos = policy.eos_token_ids[0]
    with torch.no_grad():
        policy.model.lm_head.weight.zero_()  # tied: every logit 0 ...
        policy.model.model.embed_tokens.weight[eos] = 0
    bias_to_eos = torch.nn.Parameter(torch.full((policy.model.config.vocab_size,), -50.0))
    bias_to_eos.data[eos] = 50.0
    policy.model.lm_head.bias = bias_to_eos  # ... except EOS: every row ends at once
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6="])
    out = sample_with_kv_cache(
        policy.model.eval(),
        prompt_ids,
        prompt_mask,
        max_new_tokens=8,
        eos_token_ids=policy.eos_token_ids,
        pad_token_id=policy.tokenizer.pad_token_id,
    )
    assert out.tolist() == [[eos], [eos]]


def _tiny_decoder(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", sorted(LOOP_MODEL_TYPES))
def test_every_loop_model_type_samples_the_tokens_of_generate(multinomial_draw, model_type):
    model = _tiny_decoder(model_type)
    prompt_ids = torch.tensor([[0, 1, 5, 6, 7], [1, 8, 9, 10, 11]]).repeat_interleave(3, 0)  # left-padded
    prompt_mask = (torch.arange(5) >= torch.tensor([1, 0]).repeat_interleave(3).unsqueeze(1)).long()
    torch.manual_seed(7)
    loop = sample_with_kv_cache(model, prompt_ids, prompt_mask, max_new_tokens=6, eos_token_ids=[2], pad_token_id=0)
    torch.manual_seed(7)
    generated = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        generation_config=GenerationConfig(
            max_new_tokens=6, do_sample=True, top_k=None, top_p=None, eos_token_id=[2], pad_token_id=0
        ),
    )
    torch.testing.assert_close(loop, generated[:, prompt_ids.size(1) :], rtol=0, atol=0)


def test_auto_backend_picks_the_loop_only_for_supported_model_types(arith_policy, monkeypatch):
    import grpo_lightning.policy.causal_lm as policy_module

    looped = []
    real_loop = policy_module.sample_with_kv_cache
    monkeypatch.setattr(policy_module, "sample_with_kv_cache", lambda *a, **k: looped.append(1) or real_loop(*a, **k))
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["12+34="])
    arith_policy.sample(prompt_ids, prompt_mask, SamplingParams(3, backend="auto"))
    assert looped == [1]  # llama: the loop
    arith_policy.model.config.model_type = "gpt2"  # a type the loop was not checked on
    arith_policy.sample(prompt_ids, prompt_mask, SamplingParams(3, backend="auto"))
    assert looped == [1]  # generate
    assert not supports_generation_loop(arith_policy.model)


def test_policy_sample_dispatches_on_the_backend(arith_policy, multinomial_draw):
    arith_policy.train()
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["12+34=", "5+6="])
    outs = []
    for backend in ("loop", "hf"):
        torch.manual_seed(0)
        outs.append(arith_policy.sample(prompt_ids, prompt_mask, SamplingParams(5, backend=backend)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert arith_policy.model.training  # sample restores the mode it found


def test_unknown_generation_backend_is_refused_at_load(compose_config, random_arith_dir):
    from grpo_lightning.config import ConfigError, to_train_config

    assert to_train_config(compose_config(f"model.name_or_path={random_arith_dir}")).generation.backend == "auto"
    with pytest.raises(ConfigError, match=r"generation.backend='sglang' is unknown; choose one of .*'vllm'"):
        to_train_config(compose_config(f"model.name_or_path={random_arith_dir}", "generation.backend=sglang"))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_loop_keeps_the_log_probs_it_drew_from(arith_policy, temperature):
    """record_logprobs: the decoding pass's log-probs of the drawn tokens are the trainer's (to float
    rounding: KV-cache decoding and a full pass sum in other orders), 0 after a row's EOS."""
    from grpo_lightning.policy.base import completion_mask_from_eos
    from grpo_lightning.types import TokenBatch

    torch.manual_seed(0)
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["12+34=", "7+5="] * 4)
    sampling = SamplingParams(max_new_tokens=6, temperature=temperature, backend="loop", record_logprobs=True)
    ids, kept = arith_policy.sample_with_logprobs(prompt_ids, prompt_mask, sampling)
    mask, _ = completion_mask_from_eos(ids, arith_policy.eos_token_ids)
    trainer, _ = arith_policy.logprobs_and_entropy(
        TokenBatch(prompt_ids, prompt_mask, ids, mask), temperature=temperature, with_entropy=False
    )
    valid = mask.bool()
    torch.testing.assert_close(kept[valid], trainer.detach()[valid], atol=1e-4, rtol=1e-4)
    assert (kept[~valid] == 0).all()
    plain, none = arith_policy.sample_with_logprobs(prompt_ids, prompt_mask, SamplingParams(max_new_tokens=6))
    assert none is None and plain.shape[0] == 8
