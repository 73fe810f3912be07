"""pass@k over groups of validation samples (Chen et al. 2021, arXiv:2107.03374, eq. 1)."""

from __future__ import annotations

import torch
from torch import Tensor


def pass_at_k(passed: Tensor, k: int) -> Tensor:
    """Unbiased pass@k per prompt from n >= k samples each: 1 - C(n - c, k) / C(n, k).

    Args:
        passed: [N, n] bool, whether each of a prompt's n samples passed.
    Returns:
        [N] float: the probability that at least one of k samples drawn without replacement
        from the n passes (with n == k: whether any passed).

    >>> pass_at_k(torch.tensor([[True, False, False, False], [False] * 4]), k=2)
    tensor([0.5000, 0.0000])
    """
    n = passed.size(1)
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples (got k={k}, n={n})")
    failures = n - passed.sum(dim=1)  # [N]
    # C(f, k) / C(n, k) = prod_{i=0}^{k-1} (f - i) / (n - i), 0 once f < k.
    steps = torch.arange(k, device=passed.device)  # [k]
    ratio = ((failures.unsqueeze(1) - steps).clamp(min=0).float() / (n - steps).float()).prod(dim=1)
    return 1.0 - ratio
