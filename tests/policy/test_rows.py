"""Rows shared by several completions (policy/scoring/rows.py): their gradients are summed in one
fixed order, with torch's default threads, so identical runs agree to the bit."""

import pytest
import torch
from transformers import DynamicCache

from grpo_lightning.policy.scoring.rows import add_rows, select_cache_rows, select_rows

# 3 distinct rows, each taken 32 times, 4,096 floats a row: past the size where torch splits a
# plain ``tensor[index]`` backward across threads, which then adds the 32 gradients in whatever
# order the threads reach them.
DISTINCT, TAKEN, WIDTH = 3, 96, 4096


def in_order_sum(index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The sum of ``rows`` by ``index``, one row after another: the order select_rows must keep."""
    total = torch.zeros(DISTINCT, *rows.shape[1:])
    for position, target in enumerate(index.tolist()):
        total[target] += rows[position]
    return total


@pytest.fixture
def index() -> torch.Tensor:
    return torch.randperm(TAKEN, generator=torch.Generator().manual_seed(0)) % DISTINCT  # [96]


def upstream(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def test_selected_rows_sum_their_gradients_in_order(index):
    source = torch.randn(DISTINCT, WIDTH, requires_grad=True)
    selected = select_rows(source, index)  # [96, W]
    assert torch.equal(selected, source.detach()[index])
    grad = upstream(TAKEN, WIDTH)
    selected.backward(grad)
    assert torch.equal(source.grad, in_order_sum(index, grad))


def test_added_rows_sum_in_order(index):
    rows = upstream(TAKEN, WIDTH)
    assert torch.equal(add_rows(torch.zeros(DISTINCT, WIDTH), index, rows), in_order_sum(index, rows))


def test_a_kv_cache_keeps_the_selected_rows_with_in_order_gradients(index):
    heads, length, head_dim = 2, 64, 32  # [U, heads, L, d]: 4,096 floats a row
    keys = torch.randn(DISTINCT, heads, length, head_dim, requires_grad=True)
    values = torch.randn(DISTINCT, heads, length, head_dim, requires_grad=True)
    cache = DynamicCache()
    cache.update(keys, values, layer_idx=0)
    select_cache_rows(cache, index)
    kept_keys, kept_values = cache.layers[0].keys, cache.layers[0].values  # [96, heads, L, d]
    assert torch.equal(kept_keys, keys.detach()[index]) and torch.equal(kept_values, values.detach()[index])
    grad = upstream(TAKEN, heads, length, head_dim)
    (kept_keys * grad).sum().backward()
    assert torch.equal(keys.grad, in_order_sum(index, grad))
