"""How close a step comes to this machine's own limits, measured in the worker that trained.

* Update phase (policy forward, backward, optimizer step): its model FLOP/s (bench_vs_trl's
  ``update_model_flops``: 6 per weight per needed token) against the FLOP/s this machine reaches
  on the same matrix products alone, at the model's shapes and the update's token counts: for
  every linear layer ``x @ W.T`` (forward), ``g @ W`` (input gradient) and ``g.T @ x`` (weight
  gradient), timed with the worker's threads. No training step can beat those products; the
  fraction says what the rest (attention, norms, activations, the optimizer, Python) costs.
* Generation: decoding steps per second against the bound of reading every weight once per
  decoding step (all rows of a batch share the read), at the read bandwidth this machine shows
  on a tensor far larger than its caches; and against the step's matrix products alone at the
  batch's rows (``x @ W.T`` per layer and the head), which on a CPU is the tighter bound: small
  products run far below the machine's best throughput. Prefill is counted in the time, as a
  user waits for it.

Used by ``bench_vs_trl.py --utilization`` (our side only).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Callable

import torch
from torch import nn


def linear_shapes(model: nn.Module) -> tuple[Counter, tuple[int, int]]:
    """(count of each (in, out) shape among the body's linear layers, the LM head's (in, out))."""
    head = model.get_output_embeddings()
    body = Counter(
        (module.in_features, module.out_features)
        for module in model.modules()
        if isinstance(module, nn.Linear) and module is not head
    )
    return body, (head.weight.shape[1], head.weight.shape[0])


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    def timed() -> float:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    timed()  # warm-up: allocation, kernel choice
    return statistics.median(timed() for _ in range(repeats))


def training_products_seconds(
    fan_in: int, fan_out: int, tokens: int, dtype: torch.dtype, device: torch.device, repeats: int = 5
) -> float:
    """Seconds for one linear layer's three training products at ``tokens`` rows."""
    x = torch.randn(tokens, fan_in, dtype=dtype, device=device)  # [M, in]
    weight = torch.randn(fan_out, fan_in, dtype=dtype, device=device)  # [out, in]
    grad = torch.randn(tokens, fan_out, dtype=dtype, device=device)  # [M, out]
    return _median_seconds(lambda: (x @ weight.T, grad @ weight, grad.T @ x), repeats, device)


def matmul_flops_per_s(model: nn.Module, body_tokens: int, head_tokens: int, dtype: torch.dtype) -> float:
    """FLOP/s of the update's matrix products alone, at the model's shapes and token counts, in
    ``dtype`` (the compute dtype: bf16 under autocast) on the model's device."""
    device = next(model.parameters()).device
    body, (head_in, head_out) = linear_shapes(model)
    seconds = sum(count * training_products_seconds(i, o, body_tokens, dtype, device) for (i, o), count in body.items())
    flops = sum(count * 6.0 * body_tokens * i * o for (i, o), count in body.items())
    seconds += training_products_seconds(head_in, head_out, head_tokens, dtype, device)
    flops += 6.0 * head_tokens * head_in * head_out
    return flops / seconds


def decode_products_seconds(model: nn.Module, rows: int, dtype: torch.dtype) -> float:
    """Seconds of one decoding step's matrix products alone (``x @ W.T`` for every linear layer and
    the LM head at ``rows`` rows): the compute bound of a step, where small products are far from
    the machine's best throughput."""
    device = next(model.parameters()).device
    body, head = linear_shapes(model)

    def product_seconds(fan_in: int, fan_out: int) -> float:
        x = torch.randn(rows, fan_in, dtype=dtype, device=device)  # [rows, in]
        weight = torch.randn(fan_out, fan_in, dtype=dtype, device=device)  # [out, in]
        return _median_seconds(lambda: x @ weight.T, 5, device)

    return sum(count * product_seconds(i, o) for (i, o), count in body.items()) + product_seconds(*head)


def read_bytes_per_s(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of summing a float32 tensor of ``gib`` GiB (far larger than any cache)."""
    values = torch.ones(int(gib * 2**30) // 4, device=device)
    seconds = _median_seconds(values.sum, repeats, device)
    return values.numel() * 4 / seconds


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter (a tied head counted once): one decoding step reads them all."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def record_sampling(policy_class: type) -> list[tuple[float, int, int]]:
    """Wrap ``policy_class.sample``; each call appends (seconds, decoding steps = completion
    columns, rows)."""
    calls: list[tuple[float, int, int]] = []
    sample = policy_class.sample

    def recorded(self, *args, **kwargs):
        started = time.perf_counter()
        completions = sample(self, *args, **kwargs)  # [rows, steps]
        calls.append((time.perf_counter() - started, completions.shape[1], completions.shape[0]))
        return completions

    policy_class.sample = recorded
    return calls


def figures(
    model: nn.Module,
    update_flops_per_s: float,
    body_tokens: int,
    head_tokens: int,
    sampling_calls: list[tuple[float, int, int]],
    compute_dtype: torch.dtype,
) -> dict:
    """The fractions, with what they are made of."""
    matmul = matmul_flops_per_s(model, body_tokens, head_tokens, compute_dtype)
    bandwidth = read_bytes_per_s(next(model.parameters()).device)
    weights = weight_bytes(model)
    steps_per_s = statistics.median(steps / seconds for seconds, steps, _ in sampling_calls)
    bound_steps_per_s = bandwidth / weights
    products_steps_per_s = 1.0 / decode_products_seconds(model, sampling_calls[0][2], compute_dtype)
    return {
        "decode_products_steps_per_s": products_steps_per_s,
        "generation_fraction_of_products": steps_per_s / products_steps_per_s,
        "matmul_flops_per_s": matmul,
        "update_fraction": update_flops_per_s / matmul,
        "read_bytes_per_s": bandwidth,
        "weight_bytes": weights,
        "decode_steps_per_s": steps_per_s,
        "decode_bound_steps_per_s": bound_steps_per_s,
        "generation_fraction": steps_per_s / bound_steps_per_s,
        "body_tokens": body_tokens,
        "head_tokens": head_tokens,
    }
