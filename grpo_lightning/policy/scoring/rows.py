"""Row selection and row sums whose gradients come out the same in every run.

Where several rows take the same index (a prompt's keys and values handed to each of its G
completions, an embedding row looked up at many positions), the backward pass sums their
gradients, and how it sums them decides whether two identical runs agree to the bit. torch sums
repeated indices with one of two kernels: ``index_add_`` (the backward of ``index_select``) and
``index_put_(accumulate=True)`` (the backward of ``tensor[index]``). On a CPU, ``index_add_`` walks
the indices in order and ``index_put_`` adds from several threads at once, so where three or more
rows share an index the sum's rounding depends on thread timing (it did in our agent runs, whose
long tool prompts pass the size where torch splits the work). On CUDA it is the other way round:
``index_put_`` sorts the indices (and sums bf16 in float32, as the embedding's own backward does)
and ``index_add_`` uses atomics. The functions here take the
deterministic kernel on each device (torch's deterministic mode is not needed, nor changed).
"""

from __future__ import annotations

from torch import Tensor


def add_rows(into: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """``into[index] += rows`` in place, repeated indices summed in a fixed order; returns ``into``."""
    if into.device.type == "cpu":
        return into.index_add_(0, index, rows)
    return into.index_put_((index,), rows, accumulate=True)


def select_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]`` along the first dimension, with a backward pass that sums repeated
    indices in a fixed order (:func:`add_rows`)."""
    if tensor.device.type == "cpu":
        return tensor.index_select(0, index)
    return tensor[index]


def select_cache_rows(cache, index: Tensor) -> None:
    """Keep the rows ``index`` [B] of a transformers KV ``cache`` (every layer's keys and values),
    in place, as :func:`select_rows` would: ``reorder_cache`` selects with ``index_select`` (written
    for beam search), ``batch_select_indices`` with ``tensor[index]``."""
    if index.device.type == "cpu":
        cache.reorder_cache(index)
    else:
        cache.batch_select_indices(index)
