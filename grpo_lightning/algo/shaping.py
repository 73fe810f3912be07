"""Reward shaping that needs only completion lengths: DAPO's soft overlong punishment
(Yu et al. 2025, arXiv:2503.14476, section 3.4)."""

from __future__ import annotations

from torch import Tensor


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float) -> Tensor:
    """DAPO soft overlong punishment, added to the reward.  lengths [B] -> [B]

    0                                        if L <= max_length - buffer
    -factor * (L - (max_length - buffer)) / buffer   otherwise (reaching -factor at max_length)
    """
    excess = (lengths.float() - (max_length - buffer)).clamp(min=0)
    return -factor * (excess / buffer).clamp(max=1.0)


def overlong_buffer(max_length: int, buffer_frac: float) -> int:
    """The buffer of :func:`overlong_penalty` for ``algorithm.overlong_buffer_frac``: at least one token.

    >>> overlong_buffer(20, 0.2), overlong_buffer(4, 0.1)
    (4, 1)
    """
    return max(1, round(buffer_frac * max_length))
