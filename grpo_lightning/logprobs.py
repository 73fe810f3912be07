"""Log-probs and entropy of completion tokens under a causal LM.

Only completion positions are scored, never the prompt's. Two paths give the same numbers:

* :func:`completion_token_scores_from_hidden` (``model.chunked_lm_head=true``, for model types
  whose logits are the plain head output): the decoder returns hidden states and the output
  head is applied ``chunk_size`` completions at a time, so the ``[B, T, V]`` logits never exist;
* :func:`completion_token_scores`: the model returns logits for the last T+1 positions only
  (``logits_to_keep``).

Either way the float32 log-softmax over the vocabulary is formed one chunk at a time and,
under autograd, recomputed in the backward pass (activation checkpointing), so the float32
``[B, T, V]`` tensor never exists. Where the head is a plain ``nn.Linear`` (no hooks of its
own: not gathered by DeepSpeed ZeRO-3 or FSDP2, not wrapped by LoRA), :class:`LinearTokenScores`
does the chunks' head, log-softmax and entropy in one autograd node: one head matmul a chunk
forward (the log-probs and the logged entropy together), and in the backward one recomputed
head matmul a chunk whose output becomes the logits' gradient in place, instead of autograd's
separate log-softmax, gather and entropy graphs. Where the input embedding shares the head's
weight (tied embeddings), :class:`TiedWeightGradient` has the embedding's lookups add into the
head's weight-gradient buffer, so the backward pass forms one weight-sized gradient, not one
more per lookup.

With ``share_prompts=True`` a batch whose rows repeat prompts (the G completions of a GRPO
group) runs each distinct prompt through the model once, keeps its keys and values in a KV
cache (with their autograd graph), gives every row its prompt's cache and then runs only the
completions: the prompt costs 1/G of the full pass, in the forward and in the backward. The
numbers are those of the full pass up to float rounding (tests/test_logprobs.py). It needs the
KV cache in training mode, which gradient checkpointing switches off. With ``same_calls`` (sharded
weights: every process must make the same forward calls) the two-call form runs even for a
batch whose prompts all differ.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

LOGIT_CHUNK_BYTES = {"cpu": 4 * 2**20}
"""Float32 logits per chunk when ``model.logprob_chunk_size`` is automatic, by device type, unless a
quarter of the head's float32 weight is more (:func:`completions_per_chunk`). On a CPU, 4 MiB
chunks cost no time and save memory (benchmarks/RESULTS.md: a 32,000-token vocabulary, 4 against
64 completions a chunk: the same step time within the machine's drift, 0.85x the peak RSS).
Other devices: :data:`ACCELERATOR_LOGIT_CHUNK_BYTES`."""

ACCELERATOR_LOGIT_CHUNK_BYTES = 2**30
"""1 GiB of float32 logits per chunk on GPUs: large enough that the output head's matmul stays
efficient (a 0.5B Qwen2 head over 1,700 tokens), small against the memory of the GPUs LLMs train
on. Not measured (no GPU was lent to this project's benchmarks yet)."""


class LinearTokenScores(torch.autograd.Function):
    """Log-probs and entropy of ``token_ids`` under ``linear(hidden, weight, bias) / temperature``.

    hidden [N, H], weight [V, H], bias [V] or None, token_ids [N] -> logprobs [N], entropy [N]
    (float32; entropy empty unless ``with_entropy``), ``chunk_tokens`` rows of logits at a time.
    Saves only the inputs and the log-normalizer; the backward pass recomputes each chunk's
    logits and, with p = softmax(z) and z the scaled logits, turns them in place into
    d loss / dz = dlogprob * (onehot - p) - dentropy * p * (log p + entropy), then adds the
    chunk's share of the weight gradient into one [V, H] buffer (a chunk's own [V, H] gradient,
    summed by autograd, would cost a weight-sized allocation per chunk; under autocast with
    float32 weights the chunk's bf16 product is still formed before it is added). The head runs
    in the dtype the surrounding autocast gives it, forward and backward alike. Not twice
    differentiable. With ``tied`` (the weight is also the input embedding's) the weight gradient
    goes to the embedding's lookups instead (:class:`TiedWeightGradient`).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], token_ids: Tensor,
                temperature: float, with_entropy: bool, entropy_grad: bool, chunk_tokens: int,
                tied: Optional[TiedWeightGradient] = None) -> tuple[Tensor, Tensor]:
        num_tokens = hidden.size(0)
        logprobs = hidden.new_empty(num_tokens, dtype=torch.float32)            # [N]
        log_normalizer = torch.empty_like(logprobs)                             # [N]
        entropy = torch.empty_like(logprobs) if with_entropy else logprobs.new_empty(0)
        logits_dtype = weight.dtype  # the head output's dtype, set below; this for an empty batch
        for start in range(0, num_tokens, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = nn.functional.linear(hidden[rows], weight, bias)           # [n, V]
            logits_dtype = logits.dtype
            scaled = logits.float()                                             # [n, V], fresh: changed in place
            if temperature != 1.0:
                scaled = scaled.div_(temperature)
            log_normalizer[rows] = torch.logsumexp(scaled, dim=-1)
            logprobs[rows] = scaled.gather(-1, token_ids[rows].unsqueeze(-1)).squeeze(-1) - log_normalizer[rows]
            if with_entropy:
                log_p = scaled.sub_(log_normalizer[rows].unsqueeze(-1))         # [n, V]
                entropy[rows] = -log_p.exp().mul_(log_p).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, token_ids, log_normalizer, entropy)
        ctx.logits_dtype, ctx.temperature, ctx.chunk_tokens = logits_dtype, temperature, chunk_tokens
        ctx.tied = tied
        ctx.entropy_grad = with_entropy and entropy_grad
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, logprob_grad: Tensor, entropy_grad: Optional[Tensor]):
        hidden, weight, bias, token_ids, log_normalizer, entropy = ctx.saved_tensors
        dtype = ctx.logits_dtype
        with_entropy_grad = ctx.entropy_grad and entropy_grad is not None
        head_weight = weight.to(dtype)
        head_bias = None if bias is None else bias.to(dtype)
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        hidden_grad = torch.empty_like(hidden) if needs_hidden else None
        weight_grad = torch.zeros_like(weight) if needs_weight else None
        bias_grad = torch.zeros_like(bias) if bias is not None and needs_bias else None
        for start in range(0, hidden.size(0), ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            chunk = hidden[rows].to(dtype)                                      # [n, H]
            log_p = nn.functional.linear(chunk, head_weight, head_bias).float()
            log_p = log_p.div_(ctx.temperature).sub_(log_normalizer[rows].unsqueeze(-1))  # [n, V]
            d_logprob = logprob_grad[rows].unsqueeze(-1)                        # [n, 1]
            if with_entropy_grad:
                probs = log_p.exp()                                              # [n, V]
                grad = log_p.add_(entropy[rows].unsqueeze(-1)).mul_(probs).mul_(-entropy_grad[rows].unsqueeze(-1))
                grad.sub_(probs.mul_(d_logprob))
            else:  # the probabilities in place: no second [n, V] buffer
                grad = log_p.exp_().mul_(-d_logprob)
            grad.scatter_add_(-1, token_ids[rows].unsqueeze(-1), d_logprob)
            grad = grad.div_(ctx.temperature).to(dtype)                         # d loss / d logits [n, V]
            if hidden_grad is not None:
                hidden_grad[rows] = grad @ head_weight
            if weight_grad is not None:
                if weight_grad.dtype == dtype:
                    weight_grad.addmm_(grad.t(), chunk)
                else:
                    weight_grad.add_(grad.t() @ chunk)
            if bias_grad is not None:
                bias_grad.add_(grad.sum(dim=0))
        if weight_grad is not None and ctx.tied is not None and ctx.tied.hand_over(weight_grad):
            weight_grad = None  # the embedding's last lookup returns it, with the lookups' rows added
        return hidden_grad, weight_grad, bias_grad, None, None, None, None, None, None


class TiedWeightGradient:
    """One [V, H] gradient for a weight that is both the fused output head and the input embedding.

    Autograd would form it twice over: the head's gradient (one buffer, :class:`LinearTokenScores`)
    and, for every embedding lookup, a dense [V, H] scatter of the looked-up rows' gradients
    (``embedding_dense_backward``), added into the first and freed: a second weight-sized
    allocation at the peak of the backward pass (74 MiB for a 151,936 x 128 float32 embedding,
    0.9 GiB for Qwen2.5-1.5B's). Here the head's backward hands its buffer over instead of
    returning it, each lookup's backward adds its rows into it, and the last one returns it, so
    the weight receives one gradient, formed once. The hand-over always completes: autograd runs
    a lookup's backward only after the head's (the lookup's output reaches the head through the
    decoder), and accumulates the weight's gradient only after every lookup's backward has run
    (each lookup has an edge to the weight). Where the head's backward did not run, a lookup
    returns its own gradient, as ``nn.Embedding`` would. One head call per pass
    (:func:`blocks_token_scores_from_hidden`), however many length buckets, keeps it one buffer.
    """

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        self._lookups = 0         # lookups made in the forward pass
        self._pending = 0         # lookups whose backward has not run since the hand-over
        self._buffer: Optional[Tensor] = None

    @classmethod
    def for_model(cls, model: nn.Module, head: nn.Module) -> Optional[TiedWeightGradient]:
        """One for ``model`` if its input embedding is a plain ``nn.Embedding`` sharing the fused
        ``head``'s weight (tied: Qwen2.5 up to 3B, Llama 3.2) and the weight is trained here.

        Not for an embedding with hooks of its own (accelerate's offloading, adapters): the lookup
        would bypass them. ``transformers``' hook that makes the embedding's output require grad
        (installed with gradient checkpointing) is no hindrance: the lookup's output does. Not in a
        compiled decoder, where ``inputs_embeds`` would compile a second graph (and is untested).
        """
        embedding = model.get_input_embeddings()
        if not (type(embedding) is nn.Embedding and fuses_head(head) and embedding.weight is head.weight):
            return None
        require_grads_hooks = {handle.id for handle in getattr(model, "_require_grads_hooks", None) or ()}
        hooked = (set(embedding._forward_hooks) - require_grads_hooks or embedding._forward_pre_hooks
                  or hasattr(embedding, "_hf_hook"))
        plain = embedding.max_norm is None and not embedding.scale_grad_by_freq and not embedding.sparse
        compiled = getattr(model.get_decoder(), "_compiled_call_impl", None) is not None
        trained = torch.is_grad_enabled() and embedding.weight.requires_grad
        return cls(embedding) if plain and trained and not hooked and not compiled else None

    def lookup(self, ids: Tensor) -> Tensor:
        """The embedding of ``ids`` [b, L] -> [b, L, H], as ``self.embedding(ids)``."""
        self._lookups += 1
        return _TiedLookup.apply(ids, self.embedding.weight, self)

    def hand_over(self, head_weight_grad: Tensor) -> bool:
        """The head's backward gives its weight gradient to the lookups; False if there are none
        (the head then returns it itself)."""
        if not self._lookups:
            return False
        self._buffer, self._pending = head_weight_grad, self._lookups
        return True

    def lookup_gradient(self, ids: Tensor, rows: Tensor) -> Optional[Tensor]:
        """A lookup's backward: its rows' gradients [n, H] at ``ids`` [n] added into the buffer;
        the buffer itself once every lookup has added (None before that)."""
        if self._buffer is None:  # the head took no part in this backward pass
            weight = self.embedding.weight
            return rows.new_zeros(weight.shape).index_put_((ids,), rows, accumulate=True)
        # index_put_ rather than index_add_: on CUDA it sums repeated ids in a fixed order (and in
        # float32 for bf16 weights), as embedding_dense_backward does; index_add_ uses atomics.
        self._buffer.index_put_((ids,), rows, accumulate=True)
        self._pending -= 1
        if self._pending:
            return None
        weight_grad, self._buffer = self._buffer, None  # autograd then holds the only reference and
        return weight_grad                               # accumulates it without a copy


class _TiedLookup(torch.autograd.Function):
    """``nn.functional.embedding(ids, weight)`` whose backward goes through a :class:`TiedWeightGradient`."""

    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, tied: TiedWeightGradient) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.tied, ctx.weight_dtype = tied, weight.dtype
        return nn.functional.embedding(ids, weight, tied.embedding.padding_idx)  # [b, L, H]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        flat_ids = ids.reshape(-1)                                              # [n]
        rows = grad.reshape(flat_ids.numel(), -1).to(ctx.weight_dtype)          # [n, H]
        padding_idx = ctx.tied.embedding.padding_idx
        if padding_idx is not None:  # nn.Embedding never updates the padding row
            rows = rows.masked_fill((flat_ids == padding_idx).unsqueeze(-1), 0)
        return None, ctx.tied.lookup_gradient(flat_ids, rows), None


def fuses_head(head: nn.Module) -> bool:
    """Whether :class:`LinearTokenScores` may stand in for calling ``head``: a plain Linear whose
    weights are ordinary tensors and whose call runs no hooks of its own (DeepSpeed ZeRO-3's
    gathering, FSDP2's per-module sharding, PEFT adapters replace or hook it). Lightning's FSDP
    strategy wraps the whole model and leaves the head a plain Linear: it is fused there, reading
    the weight as the unfused call would. A ``forward`` replaced without a hook (accelerate's
    ``device_map`` offloading) is not seen: load such models without it."""
    plain = lambda tensor: tensor is None or type(tensor.data) is torch.Tensor  # noqa: E731
    return (type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and plain(head.weight) and plain(head.bias))


def completions_per_chunk(completion_tokens: int, vocab_size: int, device: torch.device,
                          hidden_size: int = 0) -> int:
    """The automatic ``model.logprob_chunk_size``: completions of ``completion_tokens`` whose float32
    logits fit the device's budget (:data:`LOGIT_CHUNK_BYTES`), at least 1.

    The budget is never below a quarter of the head's float32 weight (``vocab_size x hidden_size``
    x 4 bytes): every chunk adds its share into the [V, H] weight gradient, a weight-sized write,
    so chunks much smaller than the weight spend more on that than on their logits (a 151,936 x 128
    head: 4 completions of 8 tokens a chunk, 0.75x the time of 1; bench_logprobs.py). A chunk's
    logits, probabilities and their gradient then stay below the weight gradient itself.
    """
    budget = max(LOGIT_CHUNK_BYTES.get(device.type, ACCELERATOR_LOGIT_CHUNK_BYTES), vocab_size * hidden_size)
    return max(1, budget // (4 * max(completion_tokens, 1) * vocab_size))


HIDDEN_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mistral", "mixtral"})
"""Model types whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: no logit
soft-capping or scaling after the head, so applying the head per chunk gives the same numbers."""


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


def _scores_in_chunks(to_logits: Callable[[Tensor], Tensor], inputs: Tensor, token_ids: Tensor, *,
                      temperature: float, with_entropy: bool, chunk_size: int, entropy_grad: bool
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
        chunk, ids = inputs[start:start + chunk_size], token_ids[start:start + chunk_size]
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
    logprobs = torch.cat(logprob_chunks)                                        # [B, T]
    return logprobs, torch.cat(entropy_chunks) if with_entropy else None


def token_scores_from_logits(logits: Tensor, token_ids: Tensor, *, temperature: float = 1.0,
                             with_entropy: bool = False, chunk_size: int = 64, entropy_grad: bool = True
                             ) -> tuple[Tensor, Optional[Tensor]]:
    """Log-prob of each ``token_ids`` entry and (optionally) the entropy of its distribution.

    Args:
        logits: [B, T, V] logits whose position t predicts token_ids[:, t].
        token_ids: [B, T].
        entropy_grad: False computes the entropy under no_grad (it is only logged).
    Returns:
        logprobs [B, T] (float32), entropy [B, T] or None.
    """
    return _scores_in_chunks(lambda chunk: chunk, logits, token_ids, temperature=temperature,
                             with_entropy=with_entropy, chunk_size=chunk_size, entropy_grad=entropy_grad)


def _positions(attention_mask: Tensor) -> Tensor:
    # Left padding shifts positions; count them from each row's first real token, as generate does.
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _model_inputs(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                  completion_mask: Tensor) -> dict[str, Tensor]:
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)                  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)           # [B, P+T]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": _positions(attention_mask),
            "use_cache": False}


def distinct_prompts(prompt_ids: Tensor, prompt_mask: Tensor, *, even_if_all_differ: bool = False
                     ) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """The distinct prompts [U, P] (ids and mask) and the index of each row's prompt [B].

    None when no prompt repeats, so sharing would save nothing (unless ``even_if_all_differ``).
    """
    num_prompt = prompt_ids.size(1)
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)     # [B, 2P]
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)            # [U, 2P], [B]
    if unique.size(0) == rows.size(0) and not even_if_all_differ:
        return None
    return unique[:, :num_prompt], unique[:, num_prompt:].to(prompt_mask.dtype), inverse


def _predicting_outputs(run: Callable[..., Tensor], config, prompt_ids: Tensor, prompt_mask: Tensor,
                        completion_ids: Tensor, completion_mask: Tensor, share_prompts: bool,
                        same_calls: bool) -> Tensor:
    """The model's outputs [B, T, X] at the positions that predict each completion token.

    ``run(keep, **model_inputs)`` returns per-position outputs [b, L, X] (hidden states or
    logits) for at least the last ``keep`` positions; only those are used.
    """
    num_prompt, num_completion = prompt_ids.size(1), completion_ids.size(1)
    shared = distinct_prompts(prompt_ids, prompt_mask, even_if_all_differ=same_calls) if share_prompts else None
    if shared is None:
        outputs = run(num_completion + 1, **_model_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask))
        # Position t predicts token t + 1: the completion is predicted from P-1 .. P+T-2.
        return outputs[:, -num_completion - 1:-1]                              # [B, T, X]
    from transformers import DynamicCache

    unique_ids, unique_mask, prompt_of_row = shared                              # [U, P], [U, P], [B]
    cache = DynamicCache(config=config)
    prompt_last = run(1, input_ids=unique_ids, attention_mask=unique_mask, position_ids=_positions(unique_mask),
                      past_key_values=cache, use_cache=True)[:, -1:]            # [U, 1, X]
    cache.batch_select_indices(prompt_of_row)                                   # every row: its prompt's K/V
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)           # [B, P+T]
    completion_outputs = run(num_completion, input_ids=completion_ids, attention_mask=attention_mask,
                             position_ids=_positions(attention_mask)[:, num_prompt:],
                             past_key_values=cache, use_cache=True)             # [B, T, X]
    return torch.cat([prompt_last[prompt_of_row], completion_outputs[:, :-1]], dim=1)  # [B, T, X]


def completion_token_scores(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                            completion_ids: Tensor, completion_mask: Tensor, *,
                            temperature: float = 1.0, with_entropy: bool = False,
                            chunk_size: int = 64, entropy_grad: bool = True,
                            share_prompts: bool = False, same_calls: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """Score left-padded prompts [B, P] followed by right-padded completions [B, T].

    Returns log-probs [B, T] and entropy [B, T] (or None) of the completion tokens.
    ``same_calls``: make the same model calls whatever the prompts (sharded weights).
    """
    def logits(keep: int, **inputs) -> Tensor:
        return model(**inputs, logits_to_keep=keep).logits                     # [b, keep, V]

    predicting = _predicting_outputs(logits, model.config, prompt_ids, prompt_mask, completion_ids,
                                     completion_mask, share_prompts, same_calls)  # [B, T, V]
    return token_scores_from_logits(predicting, completion_ids, temperature=temperature,
                                    with_entropy=with_entropy, chunk_size=chunk_size, entropy_grad=entropy_grad)


def supports_hidden_head(model: nn.Module) -> bool:
    """Whether :func:`completion_token_scores_from_hidden` may be used for ``model``."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in HIDDEN_HEAD_MODEL_TYPES
            and callable(getattr(model, "get_decoder", None))
            and callable(getattr(model, "get_output_embeddings", None)))


def completion_token_scores_from_hidden(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                                        completion_ids: Tensor, completion_mask: Tensor, **options
                                        ) -> tuple[Tensor, Optional[Tensor]]:
    """Same result as :func:`completion_token_scores`, but the ``[B, T, V]`` logits never exist.

    The decoder returns hidden states; the output head is applied ``chunk_size`` completions at
    a time. Only for models where :func:`supports_hidden_head`. ``options``: those of
    :func:`blocks_token_scores_from_hidden`.
    """
    return blocks_token_scores_from_hidden(model, [(prompt_ids, prompt_mask, completion_ids, completion_mask)],
                                           **options)[0]


def blocks_token_scores_from_hidden(model: nn.Module, blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]], *,
                                    temperature: float = 1.0, with_entropy: bool = False, chunk_size: int = 64,
                                    entropy_grad: bool = True, share_prompts: bool = False, same_calls: bool = False
                                    ) -> list[tuple[Tensor, Optional[Tensor]]]:
    """:func:`completion_token_scores_from_hidden` of each block (prompt ids, prompt mask,
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
        return decoder(input_ids=input_ids, **inputs).last_hidden_state                     # [b, L, H]

    hidden = [_predicting_outputs(hidden_states, model.config, *block, share_prompts, same_calls)
              for block in blocks]                                               # [b, T_b, H] each
    completion_ids = [block[2] for block in blocks]                              # [b, T_b] each
    if not fused:
        return [_scores_in_chunks(head, states, ids, temperature=temperature, with_entropy=with_entropy,
                                  chunk_size=chunk_size, entropy_grad=entropy_grad)
                for states, ids in zip(hidden, completion_ids)]
    chunk_tokens = max(1, chunk_size * max(ids.size(1) for ids in completion_ids))
    lp, ent = LinearTokenScores.apply(torch.cat([states.flatten(0, 1) for states in hidden]), head.weight,
                                      head.bias, torch.cat([ids.flatten() for ids in completion_ids]),
                                      temperature, with_entropy, entropy_grad, chunk_tokens, tied)  # [N] each
    sizes = [ids.numel() for ids in completion_ids]
    entropies = ent.split(sizes) if with_entropy else [None] * len(blocks)
    return [(block_lp.view_as(ids), None if block_ent is None else block_ent.view_as(ids))
            for block_lp, block_ent, ids in zip(lp.split(sizes), entropies, completion_ids)]  # [b, T_b] each
