"""The output head, log-softmax and entropy fused in one autograd node, and one weight gradient
for tied embeddings.

Where the head is a plain ``nn.Linear`` (no hooks of its own: not gathered by DeepSpeed ZeRO-3 or
FSDP2, not wrapped by LoRA), :class:`FusedHeadLogprobs` does the chunks' head, log-softmax and
entropy in one autograd node: one head matmul a chunk forward (the log-probs and the logged
entropy together), and in the backward one recomputed head matmul a chunk whose output becomes
the logits' gradient in place, instead of autograd's separate log-softmax, gather and entropy
graphs. Where the input embedding shares the head's weight (tied embeddings),
:class:`TiedWeightGradient` has the embedding's lookups add into the head's weight-gradient
buffer, so the backward pass forms one weight-sized gradient, not one more per lookup.
Both are tested equal to autograd's path (tests/policy/test_logprobs.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from grpo_lightning.compat import accelerate_hooked, forward_hook_ids, is_compiled, require_grads_hook_ids
from grpo_lightning.policy.scoring.rows import add_rows


class FusedHeadLogprobs(torch.autograd.Function):
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
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        token_ids: Tensor,
        temperature: float,
        with_entropy: bool,
        entropy_grad: bool,
        chunk_tokens: int,
        tied: Optional[TiedWeightGradient] = None,
    ) -> tuple[Tensor, Tensor]:
        num_tokens = hidden.size(0)
        logprobs = hidden.new_empty(num_tokens, dtype=torch.float32)  # [N]
        log_normalizer = torch.empty_like(logprobs)  # [N]
        entropy = torch.empty_like(logprobs) if with_entropy else logprobs.new_empty(0)
        logits_dtype = weight.dtype  # the head output's dtype, set below; this for an empty batch
        for start in range(0, num_tokens, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = nn.functional.linear(hidden[rows], weight, bias)  # [n, V]
            logits_dtype = logits.dtype
            scaled = logits.float()  # [n, V], fresh: changed in place
            if temperature != 1.0:
                scaled = scaled.div_(temperature)
            log_normalizer[rows] = torch.logsumexp(scaled, dim=-1)
            logprobs[rows] = scaled.gather(-1, token_ids[rows].unsqueeze(-1)).squeeze(-1) - log_normalizer[rows]
            if with_entropy:
                log_p = scaled.sub_(log_normalizer[rows].unsqueeze(-1))  # [n, V]
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
            chunk = hidden[rows].to(dtype)  # [n, H]
            log_p = nn.functional.linear(chunk, head_weight, head_bias).float()
            log_p = log_p.div_(ctx.temperature).sub_(log_normalizer[rows].unsqueeze(-1))  # [n, V]
            d_logprob = logprob_grad[rows].unsqueeze(-1)  # [n, 1]
            if with_entropy_grad:
                probs = log_p.exp()  # [n, V]
                grad = log_p.add_(entropy[rows].unsqueeze(-1)).mul_(probs).mul_(-entropy_grad[rows].unsqueeze(-1))
                grad.sub_(probs.mul_(d_logprob))
            else:  # the probabilities in place: no second [n, V] buffer
                grad = log_p.exp_().mul_(-d_logprob)
            grad.scatter_add_(-1, token_ids[rows].unsqueeze(-1), d_logprob)
            grad = grad.div_(ctx.temperature).to(dtype)  # d loss / d logits [n, V]
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

    Autograd would form it twice over: the head's gradient (one buffer, :class:`FusedHeadLogprobs`)
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
    (:func:`blocks_logprobs_from_hidden`), however many length buckets, keeps it one buffer.
    """

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        self._lookups = 0  # lookups made in the forward pass
        self._pending = 0  # lookups whose backward has not run since the hand-over
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
        hooked = forward_hook_ids(embedding) - require_grads_hook_ids(model) or accelerate_hooked(embedding)
        plain = embedding.max_norm is None and not embedding.scale_grad_by_freq and not embedding.sparse
        compiled = is_compiled(model.get_decoder())
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
            return add_rows(rows.new_zeros(self.embedding.weight.shape), ids, rows)
        add_rows(self._buffer, ids, rows)
        self._pending -= 1
        if self._pending:
            return None
        weight_grad, self._buffer = self._buffer, None  # autograd then holds the only reference and
        return weight_grad  # accumulates it without a copy


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
        flat_ids = ids.reshape(-1)  # [n]
        rows = grad.reshape(flat_ids.numel(), -1).to(ctx.weight_dtype)  # [n, H]
        padding_idx = ctx.tied.embedding.padding_idx
        if padding_idx is not None:  # nn.Embedding never updates the padding row
            rows = rows.masked_fill((flat_ids == padding_idx).unsqueeze(-1), 0)
        return None, ctx.tied.lookup_gradient(flat_ids, rows), None


def fuses_head(head: nn.Module) -> bool:
    """Whether :class:`FusedHeadLogprobs` may stand in for calling ``head``: a plain Linear whose
    weights are ordinary tensors and whose call runs no hooks of its own (DeepSpeed ZeRO-3's
    gathering, FSDP2's per-module sharding, PEFT adapters replace or hook it). Lightning's FSDP
    strategy wraps the whole model and leaves the head a plain Linear: it is fused there, reading
    the weight as the unfused call would. A ``forward`` replaced without a hook (accelerate's
    ``device_map`` offloading) is not seen: load such models without it."""
    plain = lambda tensor: tensor is None or type(tensor.data) is torch.Tensor  # noqa: E731
    return type(head) is nn.Linear and not forward_hook_ids(head) and plain(head.weight) and plain(head.bias)
