"""Completion-only, chunked log-probs and entropy against a direct log-softmax."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_lightning.policy.scoring.logprobs import (
    completion_logprobs,
    completions_per_chunk,
    logprobs_from_logits,
)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_scores_match_direct(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 11, generator=gen, requires_grad=True)
    ids = torch.randint(0, 11, (5, 4), generator=gen)
    lp, ent = logprobs_from_logits(logits, ids, temperature=0.7, with_entropy=True, chunk_size=chunk_size)
    ref_logp = torch.log_softmax(logits / 0.7, dim=-1)
    torch.testing.assert_close(lp, ref_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(ent, -(ref_logp.exp() * ref_logp).sum(-1))
    # gradients flow through the recomputed chunks and match the direct computation
    (lp.sum() + ent.sum()).backward()
    chunked_grad = logits.grad.clone()
    logits.grad = None
    direct = torch.log_softmax(logits / 0.7, dim=-1)
    (direct.gather(-1, ids.unsqueeze(-1)).sum() - (direct.exp() * direct).sum()).backward()
    torch.testing.assert_close(chunked_grad, logits.grad)


def test_entropy_of_uniform_is_log_vocab():
    _, ent = logprobs_from_logits(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long), with_entropy=True)
    torch.testing.assert_close(ent, torch.full((2, 3), torch.log(torch.tensor(8.0)).item()))


def test_completion_scores_with_left_padding_match_unpadded():
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=17,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    ).eval()
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])  # row 0 left-padded by 2
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion = torch.tensor([[3, 4, 1], [2, 2, 0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    lp, _ = completion_logprobs(model, prompt, prompt_mask, completion, completion_mask, temperature=1.0)
    # row 0 scored alone with no padding must give the same log-probs
    alone = torch.tensor([[5, 6, 3, 4, 1]])
    full = torch.log_softmax(model(alone).logits, dim=-1)[0, 1:4]  # predicts 3, 4, 1
    expected = full.gather(-1, torch.tensor([[3], [4], [1]])).squeeze(-1)
    torch.testing.assert_close(lp[0], expected, rtol=1e-5, atol=1e-5)


def _tiny_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=23,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
            tie_word_embeddings=tie,
        )
    )


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_hidden_state_scores_match_full_logits(tie, chunk_size):
    from grpo_lightning.policy.scoring.logprobs import completion_logprobs_from_hidden, supports_hidden_head

    model = _tiny_llama(tie)
    assert supports_hidden_head(model)
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 3, 4, 5]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    completion = torch.tensor([[3, 4, 1], [2, 2, 0], [9, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    args = (prompt, prompt_mask, completion, completion_mask)

    # direct: full logits of the whole sequence, plain log-softmax, no chunking anywhere
    logits = model(
        input_ids=torch.cat([prompt, completion], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask], 1),
        position_ids=(torch.cat([prompt_mask, completion_mask], 1).cumsum(1) - 1).clamp(min=0),
    ).logits
    logp = torch.log_softmax(logits[:, 3:-1] / 0.7, dim=-1)  # predicts the completion
    expected_lp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    expected_ent = -(logp.exp() * logp).sum(-1)
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    (expected_lp * weights + expected_ent).sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    lp, ent = completion_logprobs_from_hidden(model, *args, temperature=0.7, with_entropy=True, chunk_size=chunk_size)
    torch.testing.assert_close(lp, expected_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, expected_ent, rtol=1e-5, atol=1e-5)
    (lp * weights + ent).sum().backward()
    for got, want in zip((p.grad for p in model.parameters()), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    # and the logits path of the policy agrees with it
    lp_logits, _ = completion_logprobs(model, *args, temperature=0.7)
    torch.testing.assert_close(lp.detach(), lp_logits.detach(), rtol=1e-5, atol=1e-5)


def test_models_with_post_head_scaling_fall_back_to_logits():
    from transformers import GemmaConfig, GemmaForCausalLM

    from grpo_lightning.policy.scoring.logprobs import supports_hidden_head

    gemma = GemmaForCausalLM(
        GemmaConfig(
            vocab_size=11,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
        )
    )
    assert not supports_hidden_head(gemma)
    assert not supports_hidden_head(torch.nn.Linear(2, 2))


def test_policy_uses_the_hidden_state_path_only_when_asked(arith_policy, monkeypatch):
    import grpo_lightning.policy.causal_lm as policy_module
    from grpo_lightning.types import TokenBatch

    used = []
    for name in ("completion_logprobs", "blocks_logprobs_from_hidden"):
        real = getattr(policy_module, name)
        monkeypatch.setattr(
            policy_module, name, lambda *a, _real=real, _name=name, **k: used.append(_name) or _real(*a, **k)
        )
    batch = TokenBatch(
        *arith_policy.encode_prompts(["12+3=", "45+67="]),
        torch.tensor([[5, 6, 2], [7, 2, 2]]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    chunked, _ = arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    arith_policy.chunked_lm_head = False
    full, _ = arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    assert used == ["blocks_logprobs_from_hidden", "completion_logprobs"]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_automatic_chunk_size_keeps_a_chunks_logits_within_the_device_budget():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # 4 MiB on a CPU: 8 tokens x 32,000 ids x 4 bytes = 1,024,000 bytes a completion -> 4 of them
    assert completions_per_chunk(8, 32_000, cpu) == 4
    assert completions_per_chunk(8, 16, cpu) == 8192  # a tiny vocabulary: one chunk
    assert completions_per_chunk(4096, 151_936, cpu) == 1  # never fewer than one
    # 1 GiB elsewhere: 128 tokens x 151,936 ids x 4 bytes = 77.8 MB a completion -> 13
    assert completions_per_chunk(128, 151_936, gpu) == 13
    assert completions_per_chunk(0, 151_936, gpu) == completions_per_chunk(1, 151_936, gpu)
    # never below a quarter of the float32 head: 151,936 x 128 x 4 / 4 bytes over 8 x 151,936 x 4 a completion
    assert completions_per_chunk(8, 151_936, cpu, hidden_size=128) == 4
    assert completions_per_chunk(8, 32_000, cpu, hidden_size=128) == 4  # 4 MiB is the larger there


def test_policy_chunk_size_is_set_fixed_or_sized_for_the_longest_completion(arith_policy, monkeypatch):
    import grpo_lightning.policy.causal_lm as policy_module
    import grpo_lightning.policy.scoring.logprobs as logprobs
    from grpo_lightning.types import TokenBatch

    sizes = []
    real = policy_module.blocks_logprobs_from_hidden
    monkeypatch.setattr(
        policy_module, "blocks_logprobs_from_hidden", lambda *a, **k: sizes.append(k["chunk_size"]) or real(*a, **k)
    )
    vocab = arith_policy.model.config.vocab_size
    monkeypatch.setitem(logprobs.LOGIT_CHUNK_BYTES, "cpu", 4 * vocab * 48)  # 48 tokens' logits a chunk
    assert 4 * vocab * 48 > vocab * arith_policy.model.config.hidden_size  # (more than a quarter of the head)
    batch = TokenBatch(
        *arith_policy.encode_prompts(["12+3=", "45+67="]),
        torch.tensor([[5, 6, 2], [7, 2, 2]]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)  # the batch's 3 tokens: 16 a chunk
    arith_policy.max_completion_tokens = 6  # the run's longest: 8 a chunk
    arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    arith_policy.logprob_chunk_size = 1  # set: used as is
    arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    assert sizes == [16, 8, 1]


def test_the_module_sizes_chunks_for_its_longest_completion(arith_policy):
    from grpo_lightning.config import GenerationConfig
    from grpo_lightning.module import GRPOModule
    from grpo_lightning.rewards import WeightedReward

    GRPOModule(
        arith_policy,
        WeightedReward({"one": (lambda p, c, **_: [1.0] * len(c), 1.0)}),
        generation=GenerationConfig(max_new_tokens=7),
    )
    assert arith_policy.max_completion_tokens == 7


def test_model_compile_wraps_the_decoder_lazily(random_arith_dir):
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    plain = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir)))
    compiled = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir), compile=True))
    assert plain.model.get_decoder()._compiled_call_impl is None
    assert compiled.model.get_decoder()._compiled_call_impl is not None  # not run here: no compile on CPU CI


@pytest.mark.parametrize("with_entropy,entropy_grad", [(False, False), (True, True), (True, False)])
def test_fused_head_scores_match_autograd_through_the_linear_head(with_entropy, entropy_grad):
    from grpo_lightning.policy.scoring.fused_head import FusedHeadLogprobs

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 5, generator=generator, requires_grad=True)
    head = torch.nn.Linear(5, 11, bias=True)
    ids = torch.tensor([0, 3, 10, 3, 7, 1])
    weights = torch.randn(2, 6, generator=generator)

    logits = head(hidden) / 0.7  # autograd all the way
    logp = torch.log_softmax(logits, dim=-1)
    want_lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    loss = (want_lp * weights[0]).sum() + ((want_ent * weights[1]).sum() if entropy_grad else 0)
    want_grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])

    lp, ent = FusedHeadLogprobs.apply(hidden, head.weight, head.bias, ids, 0.7, with_entropy, entropy_grad, 4)
    torch.testing.assert_close(lp, want_lp, rtol=1e-5, atol=1e-6)
    if with_entropy:
        torch.testing.assert_close(ent, want_ent.detach(), rtol=1e-5, atol=1e-6)
    assert ent.requires_grad == entropy_grad
    loss = (lp * weights[0]).sum() + ((ent * weights[1]).sum() if entropy_grad else 0)
    for got, want in zip(torch.autograd.grad(loss, [hidden, head.weight, head.bias]), want_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fused_head_under_bf16_autocast_runs_the_head_in_bf16_both_ways():
    from grpo_lightning.policy.scoring.fused_head import FusedHeadLogprobs

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 16, generator=generator, requires_grad=True)
    head = torch.nn.Linear(16, 32, bias=False)
    ids = torch.randint(0, 32, (8,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.log_softmax(head(hidden).float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        got, _ = FusedHeadLogprobs.apply(hidden, head.weight, None, ids, 1.0, False, False, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # bf16 logits (fp32 ones: ~1e-2 off)
    want_grads = torch.autograd.grad(want.sum(), [hidden, head.weight])
    got_grads = torch.autograd.grad(got.sum(), [hidden, head.weight])
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_heads_with_hooks_or_adapters_are_called_not_fused():
    from grpo_lightning.policy.scoring.fused_head import fuses_head

    head = torch.nn.Linear(4, 8, bias=False)
    assert fuses_head(head)
    head.register_forward_pre_hook(lambda *_: None)  # what FSDP / DeepSpeed / offloading install
    assert not fuses_head(head)
    assert not fuses_head(torch.nn.Sequential(torch.nn.Linear(4, 8)))


def test_fused_head_refuses_a_second_derivative_clearly():
    from grpo_lightning.policy.scoring.fused_head import FusedHeadLogprobs

    hidden = torch.randn(3, 4, requires_grad=True)
    head = torch.nn.Linear(4, 5, bias=False)
    lp, _ = FusedHeadLogprobs.apply(hidden, head.weight, None, torch.tensor([0, 1, 2]), 1.0, False, False, 2)
    (grad,) = torch.autograd.grad(lp.sum(), hidden, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_policy_reads_the_vocabulary_of_a_multimodal_config(arith_policy, monkeypatch):
    from types import SimpleNamespace

    import grpo_lightning.policy.causal_lm as policy_module
    from grpo_lightning.types import TokenBatch

    asked = []
    real = policy_module.completions_per_chunk
    monkeypatch.setattr(policy_module, "completions_per_chunk", lambda *a: asked.append(a) or real(*a))
    # A composite config (Gemma 3, Qwen2.5-VL, Llava) has no vocab_size of its own: its text config does.
    monkeypatch.setattr(
        arith_policy.model.config,
        "get_text_config",
        lambda *_, **__: SimpleNamespace(vocab_size=123, hidden_size=7),
        raising=False,
    )
    batch = TokenBatch(*arith_policy.encode_prompts(["12+3="]), torch.tensor([[5, 2]]), torch.tensor([[1, 1]]))
    arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    assert [(vocab, hidden) for _, vocab, _, hidden in asked] == [(123, 7)]


def _weight_sized_allocations(loss: torch.Tensor, weight: torch.Tensor, **backward) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward(**backward)
    size = weight.numel() * weight.element_size()
    return sum(
        1
        for event in prof.events()
        if event.name in ("aten::empty", "aten::empty_strided") and event.cpu_memory_usage == size
    )


@pytest.mark.parametrize("share_prompts", [False, True])
@pytest.mark.parametrize("blocks", [[[0, 1, 2, 3]], [[0, 1], [2, 3]]])  # one block, or two (length buckets)
def test_tied_embedding_and_fused_head_form_one_weight_gradient(share_prompts, blocks, monkeypatch):
    import grpo_lightning.policy.scoring.logprobs as logprobs
    from grpo_lightning.policy.scoring.logprobs import blocks_logprobs_from_hidden

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1031,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
            tie_word_embeddings=True,
            pad_token_id=0,
        )
    )
    weight = model.get_input_embeddings().weight
    assert weight is model.get_output_embeddings().weight
    prompt = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]])  # two prompts, two rows each
    prompt_mask = (prompt != 0).long()
    completion = torch.tensor([[3, 4, 1], [2, 0, 0], [9, 0, 0], [5, 5, 5]])  # pad id 0 (the padding row)
    completion_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 1]])
    coefficients = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    row_blocks = [[t[rows] for t in (prompt, prompt_mask, completion, completion_mask)] for rows in blocks]

    def loss() -> torch.Tensor:
        scored = blocks_logprobs_from_hidden(model, row_blocks, with_entropy=True, share_prompts=share_prompts)
        return sum((lp * coefficients[rows] + 0.1 * ent).sum() for (lp, ent), rows in zip(scored, blocks))

    tied = loss()
    assert _weight_sized_allocations(tied, weight, retain_graph=True) == 1  # the head's buffer only
    tied.backward()  # twice: the hand-over repeats
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(logprobs.TiedWeightGradient, "for_model", classmethod(lambda *_: None))
    plain = loss()
    assert _weight_sized_allocations(plain, weight, retain_graph=True) > 1  # + a dense scatter per lookup
    plain.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_tied_lookup_without_the_head_gives_the_embeddings_own_gradient():
    from grpo_lightning.policy.scoring.fused_head import TiedWeightGradient

    embedding = torch.nn.Embedding(10, 3, padding_idx=2)
    ids = torch.tensor([[1, 2, 1], [4, 2, 9]])
    upstream = torch.randn(2, 3, 3)
    (TiedWeightGradient(embedding).lookup(ids) * upstream).sum().backward()
    got, embedding.weight.grad = embedding.weight.grad, None
    (embedding(ids) * upstream).sum().backward()
    torch.testing.assert_close(got, embedding.weight.grad)


def test_tied_gradient_only_for_a_plain_trained_tied_embedding():
    from grpo_lightning.policy.scoring.fused_head import TiedWeightGradient

    tied, untied = _tiny_llama(True), _tiny_llama(False)
    assert TiedWeightGradient.for_model(tied, tied.get_output_embeddings()) is not None
    assert TiedWeightGradient.for_model(untied, untied.get_output_embeddings()) is None
    with torch.no_grad():
        assert TiedWeightGradient.for_model(tied, tied.get_output_embeddings()) is None
    tied.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert tied.get_input_embeddings()._forward_hooks  # transformers' requires-grad hook
    assert TiedWeightGradient.for_model(tied, tied.get_output_embeddings()) is not None
    tied.get_input_embeddings().register_forward_hook(lambda *_: None)
    assert TiedWeightGradient.for_model(tied, tied.get_output_embeddings()) is None
