"""Completion-only, chunked log-probs and entropy against a direct log-softmax."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_lightning.logprobs import completion_token_scores, token_scores_from_logits


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_scores_match_direct(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 11, generator=gen, requires_grad=True)
    ids = torch.randint(0, 11, (5, 4), generator=gen)
    lp, ent = token_scores_from_logits(logits, ids, temperature=0.7, with_entropy=True, chunk_size=chunk_size)
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
    _, ent = token_scores_from_logits(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long), with_entropy=True)
    torch.testing.assert_close(ent, torch.full((2, 3), torch.log(torch.tensor(8.0)).item()))


def test_completion_scores_with_left_padding_match_unpadded():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=17, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=32)).eval()
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])     # row 0 left-padded by 2
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion = torch.tensor([[3, 4, 1], [2, 2, 0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    lp, _ = completion_token_scores(model, prompt, prompt_mask, completion, completion_mask, temperature=1.0)
    # row 0 scored alone with no padding must give the same log-probs
    alone = torch.tensor([[5, 6, 3, 4, 1]])
    full = torch.log_softmax(model(alone).logits, dim=-1)[0, 1:4]              # predicts 3, 4, 1
    expected = full.gather(-1, torch.tensor([[3], [4], [1]])).squeeze(-1)
    torch.testing.assert_close(lp[0], expected, rtol=1e-5, atol=1e-5)
