"""Non-finite losses and gradients: skip the update, count it, fail after too many in a row.

One NaN reward or an fp overflow in one micro-batch should not end an hours-long run, nor
silently write NaN weights: the mini-batch's update is skipped (its gradients dropped, the
optimizer and scheduler not stepped), ``actor/skipped_updates`` counts the skips so far, and
``algorithm.max_consecutive_skips`` skips in a row stop the run with :class:`NonFiniteError`
(something is systematically wrong: learning rate, precision, a reward).
"""

from __future__ import annotations

from typing import Any


class NonFiniteError(FloatingPointError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class SkipGuard:
    """Counts skipped updates; its state travels in the checkpoint for an exact resume."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def check(self, finite: bool, step: int) -> bool:
        """True when the update's loss and gradient norm were ``finite``. Otherwise count a
        skip and return False, or raise once more than ``max_consecutive`` in a row were skipped."""
        if finite:
            self.consecutive = 0
            return True
        self.total += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive updates had a non-finite loss or gradient norm (last at "
                f"optimizer step {step}); "
                f"the limit is algorithm.max_consecutive_skips={self.max_consecutive}. Lower optim.lr, check "
                "the reward functions, or use trainer.precision=32-true"
            )
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.consecutive = state["total"], state["consecutive"]
