"""Log-probs and entropy of completion tokens under a causal LM.

Only completion positions are scored: the model is asked for the last T+1 positions' logits
(``logits_to_keep``), never the prompt's. The float32 log-softmax over the vocabulary is
formed ``chunk_size`` rows at a time, and under autograd each chunk is recomputed in the
backward pass (activation checkpointing), so the float32 ``[B, T, V]`` tensor never exists.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_scores(logits: Tensor, token_ids: Tensor, temperature: float,
                  with_entropy: bool) -> tuple[Tensor, Tensor]:
    scaled = logits.float() / temperature                                    # [b, T, V]
    log_normalizer = torch.logsumexp(scaled, dim=-1)                         # [b, T]
    token_logprobs = scaled.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_normalizer
    if not with_entropy:
        return token_logprobs, torch.empty(0, device=logits.device)
    # H = -sum p log p = logsumexp(x) - sum softmax(x) * x
    entropy = log_normalizer - (torch.softmax(scaled, dim=-1) * scaled).sum(dim=-1)
    return token_logprobs, entropy


def token_scores_from_logits(logits: Tensor, token_ids: Tensor, *, temperature: float = 1.0,
                             with_entropy: bool = False, chunk_size: int = 64, entropy_grad: bool = True
                             ) -> tuple[Tensor, Optional[Tensor]]:
    """Log-prob of each ``token_ids`` entry and (optionally) the entropy of its distribution.

    Args:
        logits: [B, T, V] logits whose position t predicts token_ids[:, t].
        token_ids: [B, T].
        entropy_grad: False computes the entropy under no_grad (it is only logged), outside the
            checkpointed chunk, so the backward pass neither keeps nor recomputes it.
    Returns:
        logprobs [B, T] (float32), entropy [B, T] or None.
    """
    logprob_chunks, entropy_chunks = [], []
    recompute_in_backward = torch.is_grad_enabled() and logits.requires_grad
    entropy_apart = with_entropy and not entropy_grad and recompute_in_backward
    for start in range(0, logits.size(0), chunk_size):
        args = (logits[start:start + chunk_size], token_ids[start:start + chunk_size],
                temperature, with_entropy and not entropy_apart)
        if recompute_in_backward:
            lp, ent = checkpoint(_chunk_scores, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_scores(*args)
        if entropy_apart:
            with torch.no_grad():
                ent = _chunk_scores(*args[:3], True)[1]
        logprob_chunks.append(lp)
        entropy_chunks.append(ent)
    logprobs = torch.cat(logprob_chunks)
    return logprobs, torch.cat(entropy_chunks) if with_entropy else None


def completion_token_scores(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                            completion_ids: Tensor, completion_mask: Tensor, *,
                            temperature: float = 1.0, with_entropy: bool = False,
                            chunk_size: int = 64, entropy_grad: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Score left-padded prompts [B, P] followed by right-padded completions [B, T].

    Returns log-probs [B, T] and entropy [B, T] (or None) of the completion tokens.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)                  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)           # [B, P+T]
    # Left padding shifts positions; count them from each row's first real token, as generate does.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    num_completion = completion_ids.size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=num_completion + 1, use_cache=False).logits   # [B, T+1, V]
    return token_scores_from_logits(logits[:, :-1], completion_ids, temperature=temperature,
                                    with_entropy=with_entropy, chunk_size=chunk_size, entropy_grad=entropy_grad)
