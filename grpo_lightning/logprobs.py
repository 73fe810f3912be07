"""Log-probs and entropy of completion tokens under a causal LM.

Only completion positions are scored: the model is asked for the last T+1 positions' logits
(``logits_to_keep``), never the prompt's. The float32 log-softmax over the vocabulary is
formed ``chunk_size`` rows at a time, and under autograd each chunk is recomputed in the
backward pass (activation checkpointing), so the float32 ``[B, T, V]`` tensor never exists.
:func:`completion_token_scores_from_hidden` goes further for models whose logits are the plain
head output: it applies the head itself per chunk, so not even the model-dtype logits exist.
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
                             with_entropy: bool = False, chunk_size: int = 64
                             ) -> tuple[Tensor, Optional[Tensor]]:
    """Log-prob of each ``token_ids`` entry and (optionally) the entropy of its distribution.

    Args:
        logits: [B, T, V] logits whose position t predicts token_ids[:, t].
        token_ids: [B, T].
    Returns:
        logprobs [B, T] (float32), entropy [B, T] or None.
    """
    logprob_chunks, entropy_chunks = [], []
    recompute_in_backward = torch.is_grad_enabled() and logits.requires_grad
    for start in range(0, logits.size(0), chunk_size):
        args = (logits[start:start + chunk_size], token_ids[start:start + chunk_size],
                temperature, with_entropy)
        if recompute_in_backward:
            lp, ent = checkpoint(_chunk_scores, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_scores(*args)
        logprob_chunks.append(lp)
        entropy_chunks.append(ent)
    logprobs = torch.cat(logprob_chunks)
    return logprobs, torch.cat(entropy_chunks) if with_entropy else None


def completion_token_scores(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                            completion_ids: Tensor, completion_mask: Tensor, *,
                            temperature: float = 1.0, with_entropy: bool = False,
                            chunk_size: int = 64) -> tuple[Tensor, Optional[Tensor]]:
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
                                    with_entropy=with_entropy, chunk_size=chunk_size)


HIDDEN_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mistral", "mixtral"})
"""Model types whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: no logit
soft-capping or scaling after the head, so applying the head per chunk gives the same numbers."""


def supports_hidden_head(model: nn.Module) -> bool:
    """Whether :func:`completion_token_scores_from_hidden` may be used for ``model``."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in HIDDEN_HEAD_MODEL_TYPES
            and callable(getattr(model, "get_decoder", None))
            and callable(getattr(model, "get_output_embeddings", None)))


def _head_chunk_scores(head: nn.Module, hidden: Tensor, token_ids: Tensor, temperature: float,
                       with_entropy: bool) -> tuple[Tensor, Tensor]:
    return _chunk_scores(head(hidden), token_ids, temperature, with_entropy)   # logits [b, T, V]


def completion_token_scores_from_hidden(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                                        completion_ids: Tensor, completion_mask: Tensor, *,
                                        temperature: float = 1.0, with_entropy: bool = False,
                                        chunk_size: int = 64) -> tuple[Tensor, Optional[Tensor]]:
    """Same result as :func:`completion_token_scores`, but the ``[B, T, V]`` logits never exist.

    The decoder runs once and returns hidden states [B, T, H]; the output head is then applied
    ``chunk_size`` completions at a time, each chunk turned into log-probs at once and, under
    autograd, recomputed in the backward pass. Peak memory for the head is that of one chunk's
    logits instead of the whole batch's logits and their gradient. Only for models where
    :func:`supports_hidden_head` holds.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)                  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)           # [B, P+T]
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    num_prompt, num_completion = prompt_ids.size(1), completion_ids.size(1)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False).last_hidden_state
    # Position t predicts token t + 1, so the completion is predicted from P-1 .. P+T-2.
    hidden = hidden[:, num_prompt - 1:num_prompt + num_completion - 1]          # [B, T, H]
    head = model.get_output_embeddings()
    recompute_in_backward = torch.is_grad_enabled() and hidden.requires_grad
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, hidden.size(0), chunk_size):
        args = (head, hidden[start:start + chunk_size], completion_ids[start:start + chunk_size],
                temperature, with_entropy)
        if recompute_in_backward:
            lp, ent = checkpoint(_head_chunk_scores, *args, use_reentrant=False)
        else:
            lp, ent = _head_chunk_scores(*args)
        logprob_chunks.append(lp)
        entropy_chunks.append(ent)
    logprobs = torch.cat(logprob_chunks)                                        # [B, T]
    return logprobs, torch.cat(entropy_chunks) if with_entropy else None
