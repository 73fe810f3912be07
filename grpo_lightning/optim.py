"""The optimizer of the ``optim`` group: AdamW (fused where torch supports it), with a linear
warm-up of the learning rate stepped once per optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from grpo_lightning.compat import fused_adamw_supported
from grpo_lightning.config import OptimConfig


def build_optimizer(params: Iterable[nn.Parameter], opt: OptimConfig) -> dict:
    """Lightning's ``configure_optimizers`` form: the optimizer and its per-step scheduler."""
    params = list(params)
    fused = opt.fused if opt.fused is not None else fused_adamw_supported(params)
    optimizer = torch.optim.AdamW(
        params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, fused=fused or None
    )
    warmup = opt.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
