"""Adaptive entropy control: the entropy bonus's weight steered toward a target entropy.

After every training step, with H the step's mean token entropy (actor/entropy):

    coef <- max(0, coef + step)   if H < target      (too little exploration: reward entropy more)
    coef <- max(0, coef - step)   otherwise

as in Skywork-OR1 (He et al. 2025, arXiv:2505.22312, section 3.2.4, "adaptive entropy control").
``algorithm.entropy_coef`` is the starting value, ``algorithm.target_entropy`` the target and
``algorithm.entropy_coef_step`` the step (Skywork-OR1: 0.005). The coefficient is logged as
actor/entropy_coef and kept in the checkpoint.
"""

from __future__ import annotations


def next_entropy_coef(coef: float, entropy: float, target: float, step: float) -> float:
    """The coefficient for the next training step.

    >>> next_entropy_coef(0.01, 0.1, 0.2, 0.005), next_entropy_coef(0.003, 0.5, 0.2, 0.005)
    (0.015, 0.0)
    """
    return max(0.0, coef + step if entropy < target else coef - step)
