"""Log-probs and entropy of completion tokens under a causal LM.

Only completion positions are scored, never the prompt's. Two paths give the same numbers:

* :func:`completion_logprobs_from_hidden` (``model.chunked_lm_head=true``, for model types
  whose logits are the plain head output): the decoder returns hidden states and the output
  head is applied ``chunk_size`` completions at a time, so the ``[B, T, V]`` logits never exist;
* :func:`completion_logprobs`: the model returns logits for the last T+1 positions only
  (``logits_to_keep``).

Either way the float32 log-softmax over the vocabulary is formed one chunk at a time and,
under autograd, recomputed in the backward pass (activation checkpointing), so the float32
``[B, T, V]`` tensor never exists. Where the head is a plain linear layer it is fused with the
log-softmax and entropy (policy/scoring/fused_head.py).

With ``share_prompts=True`` a batch whose rows repeat prompts (the G completions of a GRPO
group) runs each distinct prompt through the model once, keeps its keys and values in a KV
cache (with their autograd graph), gives every row its prompt's cache and then runs only the
completions: the prompt costs 1/G of the full pass, in the forward and in the backward. The
numbers are those of the full pass up to float rounding (tests/policy/test_logprobs.py). It needs the
KV cache in training mode, which gradient checkpointing switches off. With ``same_calls`` (sharded
weights: every process must make the same forward calls) the two-call form runs even for a
batch whose prompts all differ.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grpo_lightning.compat import kv_cache_keyword
from grpo_lightning.policy.scoring.fused_head import FusedHeadLogprobs, TiedWeightGradient, fuses_head
from grpo_lightning.policy.scoring.rows import select_cache_rows, select_rows

LOGIT_CHUNK_BYTES = {"cpu": 4 * 2**20}
"""Float32 logits per chunk when ``model.logprob_chunk_size`` is automatic, by device type, unless a
quarter of the head's float32 weight is more (:func:`completions_per_chunk`). On a CPU, 4 MiB
chunks cost no time and save memory (benchmarks/RESULTS.md, "The chunk size is automatic").
Other devices: :data:`ACCELERATOR_LOGIT_CHUNK_BYTES`."""


ACCELERATOR_LOGIT_CHUNK_BYTES = 2**30
"""1 GiB of float32 logits per chunk on GPUs: large enough that the output head's matmul stays
efficient (a 0.5B Qwen2 head over 1,700 tokens), small against the memory of the GPUs LLMs train
on. Not measured (no GPU was lent to this project's benchmarks yet)."""


def completions_per_chunk(completion_tokens: int, vocab_size: int, device: torch.device, hidden_size: int = 0) -> int:
    """The automatic ``model.logprob_chunk_size``: completions of ``completion_tokens`` whose float32
    logits fit the device's budget (:data:`LOGIT_CHUNK_BYTES`), at least 1.

    The budget is never below a quarter of the head's float32 weight (``vocab_size x hidden_size``
    x 4 bytes): every chunk adds its share into the [V, H] weight gradient, a weight-sized write,
    so chunks much smaller than the weight spend more on that than on their logits (bench_logprobs.py;
    benchmarks/RESULTS.md). A chunk's
    logits, probabilities and their gradient then stay below the weight gradient itself.
    """
    budget = max(LOGIT_CHUNK_BYTES.get(device.type, ACCELERATOR_LOGIT_CHUNK_BYTES), vocab_size * hidden_size)
    return max(1, budget // (4 * max(completion_tokens, 1) * vocab_size))


HIDDEN_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mistral", "mixtral"})
"""Model types whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: no logit
soft-capping or scaling after the head, so applying the head per chunk gives the same numbers."""


def _chunk_scores(logits: Tensor, token_ids: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor]:
    scaled = logits.float() / temperature  # [b, T, V]
    log_normalizer = torch.logsumexp(scaled, dim=-1)  # [b, T]
    token_logprobs = scaled.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_normalizer
    if not with_entropy:
        return token_logprobs, torch.empty(0, device=logits.device)
    # H = -sum p log p = logsumexp(x) - sum softmax(x) * x
    entropy = log_normalizer - (torch.softmax(scaled, dim=-1) * scaled).sum(dim=-1)
    return token_logprobs, entropy


def _scores_in_chunks(
    to_logits: Callable[[Tensor], Tensor],
    inputs: Tensor,
    token_ids: Tensor,
    *,
    temperature: float,
    with_entropy: bool,
    chunk_size: int,
    entropy_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """inputs [B, T, *] (logits, or hidden states with ``to_logits`` the output head)."""

    def scores(chunk: Tensor, ids: Tensor, want_entropy: bool) -> tuple[Tensor, Tensor]:
        return _chunk_scores(to_logits(chunk), ids, temperature, want_entropy)

    recompute_in_backward = torch.is_grad_enabled() and inputs.requires_grad
    # An entropy that is only logged is computed apart, under no_grad, so the backward pass
    # neither keeps nor recomputes it.
    entropy_apart = with_entropy and not entropy_grad and recompute_in_backward
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, inputs.size(0), chunk_size):
        chunk, ids = inputs[start : start + chunk_size], token_ids[start : start + chunk_size]
        want_entropy = with_entropy and not entropy_apart
        if recompute_in_backward:
            lp, ent = checkpoint(scores, chunk, ids, want_entropy, use_reentrant=False)
        else:
            lp, ent = scores(chunk, ids, want_entropy)
        if entropy_apart:
            with torch.no_grad():
                ent = scores(chunk, ids, True)[1]
        logprob_chunks.append(lp)
        entropy_chunks.append(ent)
    logprobs = torch.cat(logprob_chunks)  # [B, T]
    return logprobs, torch.cat(entropy_chunks) if with_entropy else None


def logprobs_from_logits(
    logits: Tensor,
    token_ids: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 64,
    entropy_grad: bool = True,
) -> tuple[Tensor, Optional[Tensor]]:
    """Log-prob of each ``token_ids`` entry and (optionally) the entropy of its distribution.

    Args:
        logits: [B, T, V] logits whose position t predicts token_ids[:, t].
        token_ids: [B, T].
        entropy_grad: False computes the entropy under no_grad (it is only logged).
    Returns:
        logprobs [B, T] (float32), entropy [B, T] or None.
    """
    return _scores_in_chunks(
        lambda chunk: chunk,
        logits,
        token_ids,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk_size=chunk_size,
        entropy_grad=entropy_grad,
    )


def _positions(attention_mask: Tensor) -> Tensor:
    # Left padding shifts positions; count them from each row's first real token, as generate does.
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _model_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor
) -> dict[str, Tensor]:
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": _positions(attention_mask),
        "use_cache": False,
    }


def distinct_prompts(
    prompt_ids: Tensor, prompt_mask: Tensor, *, even_if_all_differ: bool = False
) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """The distinct prompts [U, P] (ids and mask) and the index of each row's prompt [B].

    None when no prompt repeats, so sharing would save nothing (unless ``even_if_all_differ``).
    """
    num_prompt = prompt_ids.size(1)
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)  # [B, 2P]
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)  # [U, 2P], [B]
    if unique.size(0) == rows.size(0) and not even_if_all_differ:
        return None
    return unique[:, :num_prompt], unique[:, num_prompt:].to(prompt_mask.dtype), inverse


def _predicting_outputs(
    run: Callable[..., Tensor],
    config,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    share_prompts: bool,
    same_calls: bool,
    cache_keyword: str,
) -> Tensor:
    """The model's outputs [B, T, X] at the positions that predict each completion token.

    ``run(keep, **model_inputs)`` returns per-position outputs [b, L, X] (hidden states or
    logits) for at least the last ``keep`` positions; only those are used.
    """
    num_prompt, num_completion = prompt_ids.size(1), completion_ids.size(1)
    shared = distinct_prompts(prompt_ids, prompt_mask, even_if_all_differ=same_calls) if share_prompts else None
    if shared is None:
        outputs = run(num_completion + 1, **_model_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask))
        # Position t predicts token t + 1: the completion is predicted from P-1 .. P+T-2.
        return outputs[:, -num_completion - 1 : -1]  # [B, T, X]
    from transformers import DynamicCache

    unique_ids, unique_mask, prompt_of_row = shared  # [U, P], [U, P], [B]
    cache = DynamicCache(config=config)
    prompt_last = run(
        1,
        input_ids=unique_ids,
        attention_mask=unique_mask,
        position_ids=_positions(unique_mask),
        **{cache_keyword: cache},
        use_cache=True,
    )[:, -1:]  # [U, 1, X]
    select_cache_rows(cache, prompt_of_row)  # every row: its prompt's K/V
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    completion_outputs = run(
        num_completion,
        input_ids=completion_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask)[:, num_prompt:],
        **{cache_keyword: cache},
        use_cache=True,
    )  # [B, T, X]
    return torch.cat([select_rows(prompt_last, prompt_of_row), completion_outputs[:, :-1]], dim=1)  # [B, T, X]


def completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 64,
    entropy_grad: bool = True,
    share_prompts: bool = False,
    same_calls: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Score left-padded prompts [B, P] followed by right-padded completions [B, T].

    Returns log-probs [B, T] and entropy [B, T] (or None) of the completion tokens.
    ``same_calls``: make the same model calls whatever the prompts (sharded weights).
    """

    def logits(keep: int, **inputs) -> Tensor:
        return model(**inputs, logits_to_keep=keep).logits  # [b, keep, V]

    predicting = _predicting_outputs(
        logits,
        model.config,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        share_prompts,
        same_calls,
        kv_cache_keyword(model),
    )  # [B, T, V]
    return logprobs_from_logits(
        predicting,
        completion_ids,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk_size=chunk_size,
        entropy_grad=entropy_grad,
    )


def supports_hidden_head(model: nn.Module) -> bool:
    """Whether :func:`completion_logprobs_from_hidden` may be used for ``model``."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in HIDDEN_HEAD_MODEL_TYPES
        and callable(getattr(model, "get_decoder", None))
        and callable(getattr(model, "get_output_embeddings", None))
    )


def completion_logprobs_from_hidden(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    **options,
) -> tuple[Tensor, Optional[Tensor]]:
    """Same result as :func:`completion_logprobs`, but the ``[B, T, V]`` logits never exist.

    The decoder returns hidden states; the output head is applied ``chunk_size`` completions at
    a time. Only for models where :func:`supports_hidden_head`. ``options``: those of
    :func:`blocks_logprobs_from_hidden`.
    """
    return blocks_logprobs_from_hidden(model, [(prompt_ids, prompt_mask, completion_ids, completion_mask)], **options)[
        0
    ]


def blocks_logprobs_from_hidden(
    model: nn.Module,
    blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 64,
    entropy_grad: bool = True,
    share_prompts: bool = False,
    same_calls: bool = False,
) -> list[tuple[Tensor, Optional[Tensor]]]:
    """:func:`completion_logprobs_from_hidden` of each block (prompt ids, prompt mask,
    completion ids, completion mask; the length buckets of a pass), the decoder run per block.

    A fused head (:func:`fuses_head`) runs once over all blocks' completion positions, so that
    its weight gradient is one buffer for the whole pass, shared with the tied embedding's
    lookups where there is one (:class:`TiedWeightGradient`). ``same_calls``: make the same model
    calls whatever the prompts (sharded weights).
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    fused = fuses_head(head)
    # Sharded weights (same_calls) keep the embedding's own backward, which their strategy's
    # gradient hooks were written for (the hand-over is not exercised there: no GPUs here).
    tied = None if same_calls else TiedWeightGradient.for_model(model, head)

    def hidden_states(keep: int, input_ids: Tensor, **inputs) -> Tensor:
        if tied is not None:
            return decoder(inputs_embeds=tied.lookup(input_ids), **inputs).last_hidden_state  # [b, L, H]
        return decoder(input_ids=input_ids, **inputs).last_hidden_state  # [b, L, H]

    cache_keyword = kv_cache_keyword(model)
    hidden = [
        _predicting_outputs(hidden_states, model.config, *block, share_prompts, same_calls, cache_keyword)
        for block in blocks
    ]  # [b, T_b, H] each
    completion_ids = [block[2] for block in blocks]  # [b, T_b] each
    if not fused:
        return [
            _scores_in_chunks(
                head,
                states,
                ids,
                temperature=temperature,
                with_entropy=with_entropy,
                chunk_size=chunk_size,
                entropy_grad=entropy_grad,
            )
            for states, ids in zip(hidden, completion_ids)
        ]
    chunk_tokens = max(1, chunk_size * max(ids.size(1) for ids in completion_ids))
    lp, ent = FusedHeadLogprobs.apply(
        torch.cat([states.flatten(0, 1) for states in hidden]),
        head.weight,
        head.bias,
        torch.cat([ids.flatten() for ids in completion_ids]),
        temperature,
        with_entropy,
        entropy_grad,
        chunk_tokens,
        tied,
    )  # [N] each
    sizes = [ids.numel() for ids in completion_ids]
    entropies = ent.split(sizes) if with_entropy else [None] * len(blocks)
    return [
        (block_lp.view_as(ids), None if block_ent is None else block_ent.view_as(ids))
        for block_lp, block_ent, ids in zip(lp.split(sizes), entropies, completion_ids)
    ]  # [b, T_b] each
