"""A lean sampling loop with a KV cache: what ``generate`` does for GRPO, minus its machinery.

``transformers``' ``generate`` spends most of a small model's decoding time in per-token Python
(logits-processor and stopping-criteria objects, output bookkeeping, cache-position logic).
GRPO needs one thing from it: N*G rows sampled at temperature T with optional top-k / top-p,
stopping when every row has produced EOS. This loop does exactly that:

    prefill each distinct prompt once (only the last position's logits) -> cache,
        then give every row its prompt's cache and logits (the G rows of a group share one)
    repeat up to max_new_tokens:
        filter (temperature, top-k, top-p) and draw one token per row
        finished rows get the pad id; stop when all rows are finished (one sync per token;
        with ``lockstep``, when all rows of every process are: sharded weights)
        feed the new column with the grown mask and next positions

The filters use the same operations, in the same order, as ``generate``'s
TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper -> softmax. The draw departs
from ``generate``'s ``torch.multinomial``: that draws one exponential variate per vocabulary
entry per row (on a CPU most of a decode step at a real vocabulary: benchmarks/RESULTS.md, "The
sampling loop draws by inverse CDF"), while :func:`draw_tokens` inverts the cumulative
distribution with one uniform variate per row. Same distribution, other random numbers: with
``draw_tokens`` replaced by a multinomial draw, the loop gives ``generate``'s tokens for the
same seed (tests/policy/test_generation_loop.py checks both).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from grpo_lightning.compat import kv_cache_keyword
from grpo_lightning.distributed import AllAgree, widest_float

LOOP_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
"""Decoder-only model types that ``generation.backend=auto`` samples with this loop: their
forward takes the prompt mask, position ids and a ``DynamicCache`` exactly as ``generate``'s
does (tests/policy/test_generation_loop.py checks each, token for token). Others go to ``generate``."""


def supports_generation_loop(model: nn.Module) -> bool:
    """Whether ``generation.backend=auto`` may sample ``model`` with :func:`sample_with_kv_cache`."""
    return getattr(getattr(model, "config", None), "model_type", None) in LOOP_MODEL_TYPES


def filter_logits(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Logits [B, V] scaled by 1/temperature, with tokens outside top-k / top-p set to -inf."""
    scores = logits / temperature if temperature != 1.0 else logits
    if 0 < top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [B, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        # Drop the low-probability tail whose total mass is at most 1 - top_p; keep >= 1 token.
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        tail_mass = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [B, V] ascending
        remove_sorted = tail_mass <= 1 - top_p
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


DRAW_CHUNK_BYTES = {"cpu": 4 * 2**20}
"""Float64 working memory of one draw by device type (others: :data:`ACCELERATOR_DRAW_CHUNK_BYTES`):
rows are drawn this many bytes' worth at a time. On a CPU a draw's [B, V] float64 buffer past
glibc's mmap threshold is fresh zeroed pages at every token (32 rows of a 151,936-token
vocabulary: 39 MB); 4 MiB pieces are reused."""

ACCELERATOR_DRAW_CHUNK_BYTES = 2**30
"""1 GiB on GPUs: one piece for most batches (kernel launches, not memory, are their cost)."""


def draw_tokens(scores: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One token per row of ``scores`` [B, V] (filtered logits), drawn from ``softmax(scores)``.

    Inverse-CDF sampling (:func:`inverse_cdf`) in float64 (float32 on MPS, which has none): a
    float32 cumulative sum over 150k probabilities would misplace the boundaries of the rarest
    tokens. A float64 copy of a block of rows becomes their unnormalized cumulative distribution
    in place (exp(s - max), summed), blocks of at most :data:`DRAW_CHUNK_BYTES`; the uniform
    variates are drawn for all rows first, so the tokens do not depend on the block size.
    """
    dtype = widest_float(scores.device)
    uniform = torch.rand(scores.size(0), dtype=dtype, device=scores.device, generator=generator)  # [B] in [0, 1)
    budget = DRAW_CHUNK_BYTES.get(scores.device.type, ACCELERATOR_DRAW_CHUNK_BYTES)
    rows_per_block = max(1, budget // (scores.size(-1) * dtype.itemsize))
    tokens = []
    for start in range(0, scores.size(0) or 1, rows_per_block):  # an empty batch: one empty block
        rows = slice(start, start + rows_per_block)
        weights = scores[rows].to(dtype, copy=True)  # [b, V]
        cumulative = weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)
        tokens.append(inverse_cdf(cumulative, uniform[rows]))  # [b]
    return torch.cat(tokens) if len(tokens) > 1 else tokens[0]  # [B]


def inverse_cdf(cumulative: Tensor, uniform: Tensor) -> Tensor:
    """The token of each row whose bucket of ``cumulative`` [B, V] (a row's running sum of
    nonnegative weights) holds ``uniform`` [B] in [0, 1), scaled to the row's total.

    The target ``(1 - u) * total`` lies in ``(0, total]``, so the first bucket reaching it always
    has positive weight: a token filtered to zero (top-k, top-p) is never drawn, whatever ``u``.
    """
    target = (1.0 - uniform.to(cumulative.dtype).unsqueeze(1)) * cumulative[:, -1:]  # [B, 1] in (0, total]
    return torch.searchsorted(cumulative, target).squeeze(1)  # [B]


def _raise_if_not_finite(finite_rows: Tensor, new_token: int) -> None:
    bad = int((~finite_rows).sum())
    if bad:
        raise FloatingPointError(
            f"sampling: the policy's next-token distribution is not finite (NaN/inf logits) in {bad} of "
            f"{finite_rows.numel()} rows at new token {new_token}: the weights or activations overflowed. "
            "Use trainer.precision=32-true (or bf16-mixed instead of 16-mixed), or lower optim.lr"
        )


@torch.no_grad()
def sample_with_kv_cache(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    lockstep: Optional[AllAgree] = None,
    logprobs_out: Optional[list[Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Completion ids [B, T] (T <= max_new_tokens) for left-padded prompts [B, P].

    Rows that have produced an EOS are filled with ``pad_token_id`` afterwards; decoding stops
    as soon as every row has one, or, with ``lockstep``, as soon as every row of every process
    has one (each process makes the same number of forward calls, as sharded weights need).
    With ``logprobs_out`` (an empty list), the sampler's log-probs [B, T] of the drawn tokens are
    appended to it: log softmax(logits / temperature), the distribution the trainer scores (top-k /
    top-p not reflected), as this decoding pass computed them (the rollout correction compares
    them with the trainer's). ``generator``: the draws' random numbers come from it instead of
    torch's global generator (a sampler thread must not share that with training).
    """
    from transformers import DynamicCache

    device = prompt_ids.device
    eos = torch.tensor(eos_token_ids, device=device)
    attention_mask = prompt_mask.long()  # [B, P]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P]
    cache = DynamicCache(config=model.config)
    cache_keyword = kv_cache_keyword(model)
    finished = torch.zeros(prompt_ids.size(0), dtype=torch.bool, device=device)  # [B]
    columns, log_columns = [], []
    logits = _prefill(model, prompt_ids, attention_mask, position_ids, cache, cache_keyword)  # [B, V]
    while True:
        logits = logits.float()  # [B, V]
        finite_rows = logits.amax(dim=-1).isfinite()  # [B]: NaN and +inf show here
        if do_sample:
            tokens = draw_tokens(filter_logits(logits, temperature, top_k, top_p), generator)  # [B]
        else:
            tokens = logits.argmax(dim=-1)  # [B]
        finite_or_done = finite_rows | finished  # [B]: finished rows are padding
        tokens = tokens.masked_fill(finished, pad_token_id)
        columns.append(tokens)
        if logprobs_out is not None:
            scaled = logits / temperature if temperature != 1.0 else logits
            sampled = scaled.gather(1, tokens.unsqueeze(1)).squeeze(1) - scaled.logsumexp(dim=-1)  # [B]
            log_columns.append(sampled.masked_fill(finished, 0.0))  # rows already ended: padding
        finished |= torch.isin(tokens, eos)
        # one host sync per token, for both questions
        all_finished, all_finite = torch.stack([finished.all(), finite_or_done.all()]).tolist()
        if not all_finite:
            _raise_if_not_finite(finite_or_done, len(columns))
        if len(columns) == max_new_tokens:
            break
        done = all_finished
        if lockstep is not None:
            done = lockstep(done)
        if done:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.size(0), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{cache_keyword: cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
    if logprobs_out is not None:
        logprobs_out.append(torch.stack(log_columns, dim=1))  # [B, T]
    return torch.stack(columns, dim=1)  # [B, T]


def _prefill(
    model: nn.Module, prompt_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache, cache_keyword: str
) -> Tensor:
    """Next-token logits [B, V] after each row's prompt, with the prompts' keys/values in ``cache``.

    Each distinct prompt runs once; its rows then share its logits and a copy of its cache.
    """
    from grpo_lightning.policy.scoring.logprobs import distinct_prompts

    shared = distinct_prompts(prompt_ids, attention_mask)
    if shared is None:
        return model(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{cache_keyword: cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
    unique_ids, unique_mask, prompt_of_row = shared  # [U, P], [U, P], [B]
    unique_positions = (unique_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=unique_ids,
        attention_mask=unique_mask,
        position_ids=unique_positions,
        **{cache_keyword: cache},
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]  # [U, V]
    cache.batch_select_indices(prompt_of_row)
    return logits[prompt_of_row]  # [B, V]
