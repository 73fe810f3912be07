"""Length buckets for scoring: no forward or backward work on the padding after short completions.

A GRPO batch pads every completion to the longest one; with completions of 50 to 1,000 tokens
most of a padded ``[B, T]`` block is padding, and a scoring pass (reference, old or policy
log-probs, and the backward of the last) spends its time there. Splitting the rows into groups
of similar length and trimming each group to its own longest completion (and its prompts to their
longest one) removes that work; every row's log-probs are the same as in the padded pass, because
a causal model's outputs at a position never depend on later positions or on padding.

The split costs a forward call per bucket and, with ``model.share_prompts``, a prompt whose G
completions land in several buckets is run once per bucket. So a pass is split only when the
estimated tokens it runs fall by at least :data:`MIN_SAVING`: never for the near-uniform short
completions of the built-in task, typically for long completions of mixed length.

    grpo-train model.length_buckets=4     # at most 4 buckets per scoring pass (the default)
    grpo-train model.length_buckets=1     # one padded block, as before
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

MIN_SAVING = 0.25
"""Split a scoring pass only when its estimated cost falls by at least this fraction."""
CALL_COST_TOKENS = 256
"""The fixed cost of one more forward and backward call, counted as this many tokens' work:
short batches are not worth splitting (benchmarks/bench_length_buckets.py, 8x4x8x8)."""


def could_pay(num_rows: int, prompt_columns: int, completion_columns: int, max_buckets: int) -> bool:
    """Whether a ``[B, P+T]`` block is large enough for any split into ``max_buckets`` groups to
    pass :func:`length_buckets`' test, from its shape alone (no device work): the groups' calls
    alone cost ``k * CALL_COST_TOKENS``, which must stay under ``1 - MIN_SAVING`` of the block's."""
    groups = min(max_buckets, num_rows)
    padded_cost = num_rows * (prompt_columns + completion_columns) + CALL_COST_TOKENS
    return groups > 1 and groups * CALL_COST_TOKENS <= (1 - MIN_SAVING) * padded_cost


def length_buckets(
    prompt_mask: Tensor, completion_mask: Tensor, max_buckets: int, prompt_of_row: Optional[Tensor] = None
) -> Optional[list[Tensor]]:
    """Row indices [b_i] of up to ``max_buckets`` groups of similar completion length, or None.

    Rows are sorted by completion length and cut into equal-count groups. The split is kept when
    its cost is at most ``1 - MIN_SAVING`` of the padded block's. A block's cost is the tokens
    it runs plus CALL_COST_TOKENS: ``B*(P+T)`` for the padded block, or, with shared prompts
    (``prompt_of_row`` [B], the index of each row's distinct prompt), each distinct prompt once,
    ``U*P + B*T``; a group runs its own distinct prompts, trimmed to its longest, and its rows'
    completions, trimmed likewise.
    """
    num_rows, num_completion = completion_mask.shape
    if not could_pay(num_rows, prompt_mask.size(1), num_completion, max_buckets):
        return None
    if prompt_of_row is None:
        prompt_of_row = torch.arange(num_rows, device=completion_mask.device)
    completion_lengths = completion_mask.sum(dim=1)  # [B]
    prompt_lengths = prompt_mask.sum(dim=1)  # [B]
    order = torch.argsort(completion_lengths, stable=True)
    groups = list(order.tensor_split(min(max_buckets, num_rows)))

    def distinct(rows: Tensor) -> Tensor:  # how many distinct prompts, without a host sync
        return completion_lengths.new_zeros(num_rows).index_fill(0, prompt_of_row[rows], 1).sum()

    sizes = torch.stack(
        [torch.stack([completion_lengths[g].max(), prompt_lengths[g].max(), distinct(g)]) for g in groups]
        + [distinct(order).expand(3)]
    ).tolist()  # one host sync
    *per_group, (all_prompts, _, _) = sizes
    split = sum(
        len(g) * completion + prompts * prompt + CALL_COST_TOKENS
        for g, (completion, prompt, prompts) in zip(groups, per_group)
    )
    padded = all_prompts * prompt_mask.size(1) + num_rows * num_completion + CALL_COST_TOKENS
    return groups if split <= (1 - MIN_SAVING) * padded else None


def trim_padding(
    prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same rows without the prompt columns that are padding in every row (left-padded
    prompts) and the completion columns after every row's end (right-padded completions)."""
    first_prompt_column = int(prompt_mask.any(dim=0).int().argmax())
    completion_columns = max(1, int(completion_mask.sum(dim=1).max()))
    return (
        prompt_ids[:, first_prompt_column:],
        prompt_mask[:, first_prompt_column:],
        completion_ids[:, :completion_columns],
        completion_mask[:, :completion_columns],
    )


def scatter_rows(parts: list[tuple[Tensor, Tensor]], num_rows: int, num_columns: int) -> Tensor:
    """[B, T] from (rows [b], values [b, T_b <= T]) pairs, zero past each part's columns.

    Out of place (``index_copy``), so gradients flow back to every part."""
    _, first = parts[0]
    out = first.new_zeros(num_rows, num_columns)
    for rows, values in parts:
        padded = torch.nn.functional.pad(values, (0, num_columns - values.size(1)))
        out = out.index_copy(0, rows, padded)
    return out
