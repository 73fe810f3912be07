"""What only a CUDA GPU can check: the loop sampler, the fused LM head and the tied-embedding
gradient on CUDA kernels, in bf16, and bf16-mixed training steps end to end. Skipped without a
GPU (CI has none); `bash benchmarks/gpu_check.sh` runs them on one, with the GPU benchmarks."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from grpo_lightning.config import ModelConfig
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.policy.generation.loop import sample_with_kv_cache
from grpo_lightning.policy.scoring.fused_head import FusedHeadLogprobs
from grpo_lightning.policy.scoring.logprobs import blocks_logprobs_from_hidden

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def qwen2_shaped(dtype: torch.dtype) -> Qwen2ForCausalLM:
    """Qwen2.5's vocabulary and tied head on a small random body."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=151_936,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    return Qwen2ForCausalLM(config).to(CUDA, dtype)


def test_loop_sampler_on_cuda_takes_the_tokens_of_generate_greedily():
    model = qwen2_shaped(torch.float32).eval()
    prompt_ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 11, 12, 13]], device=CUDA)
    prompt_mask = (prompt_ids != 0).long()
    loop = sample_with_kv_cache(
        model, prompt_ids, prompt_mask, max_new_tokens=8, eos_token_ids=[1], pad_token_id=0, do_sample=False
    )
    generated = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        generation_config=GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=[1], pad_token_id=0),
    )
    torch.testing.assert_close(loop, generated[:, prompt_ids.size(1) :], rtol=0, atol=0)


def test_loop_sampler_draws_valid_tokens_in_bf16_on_cuda():
    model = qwen2_shaped(torch.bfloat16).eval()
    prompt_ids = torch.randint(2, 1000, (16, 12), device=CUDA)
    tokens = sample_with_kv_cache(
        model,
        prompt_ids,
        torch.ones_like(prompt_ids),
        max_new_tokens=16,
        eos_token_ids=[1],
        pad_token_id=0,
        do_sample=True,
        temperature=1.0,
    )
    assert tokens.device == prompt_ids.device and tokens.shape[0] == 16
    assert ((tokens >= 0) & (tokens < 151_936)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_matches_autograd_on_cuda(dtype):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    hidden = torch.randn(64, 128, generator=generator, device=CUDA, dtype=dtype, requires_grad=True)
    weight = (0.05 * torch.randn(151_936, 128, generator=generator, device=CUDA)).to(dtype).requires_grad_()
    ids = torch.randint(0, 151_936, (64,), generator=generator, device=CUDA)
    logp = torch.log_softmax((hidden @ weight.T).float() / 0.7, dim=-1)  # autograd all the way
    want_lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    want_grads = torch.autograd.grad(want_lp.sum() + 0.1 * want_ent.sum(), [hidden, weight])
    lp, ent = FusedHeadLogprobs.apply(hidden, weight, None, ids, 0.7, True, True, 16)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lp.float(), want_lp, **tolerance)
    torch.testing.assert_close(ent.float(), want_ent.detach(), **tolerance)
    for got, want in zip(torch.autograd.grad(lp.sum() + 0.1 * ent.sum(), [hidden, weight]), want_grads):
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), **tolerance)


def test_tied_embedding_gradient_in_bf16_on_cuda_matches_the_plain_path(monkeypatch):
    import grpo_lightning.policy.scoring.logprobs as logprobs

    model = qwen2_shaped(torch.bfloat16)
    prompt = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]], device=CUDA)
    completion = torch.tensor([[3, 4, 1], [2, 0, 0], [9, 0, 0], [5, 5, 5]], device=CUDA)
    completion_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 1]], device=CUDA)
    block = [[prompt, (prompt != 0).long(), completion, completion_mask]]

    def weight_gradient() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        ((lp, ent),) = blocks_logprobs_from_hidden(model, block, with_entropy=True, share_prompts=True)
        ((lp * completion_mask).sum() + 0.1 * ent.sum()).backward()
        return model.get_input_embeddings().weight.grad.float()

    tied = weight_gradient()
    monkeypatch.setattr(logprobs.TiedWeightGradient, "for_model", classmethod(lambda *_: None))
    plain = weight_gradient()
    assert torch.isfinite(tied).all() and tied.abs().sum() > 0
    # bf16 sums in another order differ by an ulp here and there: compare the whole gradient.
    assert (tied - plain).norm() <= 1e-2 * plain.norm()


def test_bf16_mixed_training_steps_on_cuda(random_arith_dir, tmp_path):
    from grpo_lightning.run.train import load_config, train

    captured = {}
    from_config = CausalLMPolicy.from_config

    def capture(cfg: ModelConfig) -> CausalLMPolicy:
        captured["policy"] = from_config(cfg)
        captured["start"] = {n: p.detach().clone() for n, p in captured["policy"].named_parameters()}
        return captured["policy"]

    CausalLMPolicy.from_config = staticmethod(capture)
    try:
        metrics = train(
            load_config(
                [
                    f"output_dir={tmp_path}",
                    f"model.name_or_path={random_arith_dir}",
                    "trainer=gpu",
                    "trainer.max_steps=3",
                    "algorithm.entropy_coef=0.01",  # parameters move whatever the rewards
                    "checkpoint.enabled=false",
                ]
            )
        )
    finally:
        CausalLMPolicy.from_config = from_config
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    policy = captured["policy"]
    assert next(policy.parameters()).device.type == "cuda"
    moved = [n for n, p in policy.named_parameters() if not torch.equal(p.cpu(), captured["start"][n].cpu())]
    assert moved
