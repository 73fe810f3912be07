"""What ``checkpoints/last.ckpt`` may leave out to be smaller, and how a resume puts it back.

A full checkpoint holds every weight of the module and AdamW's two moments per trainable
weight: for a model of P float32 parameters trained in full with a KL reference, 4 x 4P bytes
(the policy, its frozen reference copy, two moments). Two parts can be left out:

* ``checkpoint.save_frozen_weights=false``: the weights that never train (the KL reference
  copy; with LoRA the whole base model, leaving the adapters). Every run builds them again from
  ``model.name_or_path`` before it loads a checkpoint, so a resume takes them from there; a
  fingerprint of them is kept, and a resume whose model gives other frozen weights is refused.
* ``checkpoint.save_optimizer_state=false``: AdamW's moments (its parameter groups, so the
  learning rate and schedule, are kept). A resume then starts the moments from zero, as at the
  start of a run: training continues, but not as it would have without the interruption.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from grpo_lightning.config import ConfigError

FROZEN_WEIGHTS_KEY = "frozen_weights_left_out"
MOMENTS_KEY = "optimizer_moments_left_out"


def frozen_weight_names(module: nn.Module) -> list[str]:
    """The ``state_dict`` keys of ``module``'s parameters that do not train (tied names included)."""
    return sorted(name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad)


def fingerprint(module: nn.Module, names: list[str]) -> Tensor:
    """Sum and absolute sum of each named parameter, in float64 on the CPU: # [len(names), 2]."""
    params = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        rows = [torch.stack([params[n].double().sum(), params[n].double().abs().sum()]) for n in names]
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)


def leave_out_frozen_weights(checkpoint: dict[str, Any], names: list[str], print_: Tensor) -> None:
    for name in names:
        checkpoint["state_dict"].pop(name, None)
    checkpoint[FROZEN_WEIGHTS_KEY] = {"names": names, "fingerprint": print_}


def put_back_frozen_weights(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Fill in the weights a checkpoint left out from ``module``'s own, after checking that they
    are the ones the checkpoint was written with."""
    left_out = checkpoint.get(FROZEN_WEIGHTS_KEY)
    if left_out is None:
        return
    names = left_out["names"]
    params = dict(module.named_parameters(remove_duplicate=False))
    missing = [name for name in names if name not in params or params[name].requires_grad]
    if missing or not torch.allclose(fingerprint(module, names), left_out["fingerprint"], rtol=1e-6, atol=1e-6):
        raise ConfigError(
            "the checkpoint was written with checkpoint.save_frozen_weights=false, so its frozen "
            "weights (KL reference, LoRA base model) come from model.name_or_path, and the model "
            f"loaded now has other ones{' (e.g. ' + missing[0] + ')' if missing else ''}: resume "
            "with the model.name_or_path and model.lora settings the run was started with"
        )
    for name in names:
        checkpoint["state_dict"][name] = params[name].detach()


def leave_out_optimizer_moments(checkpoint: dict[str, Any]) -> None:
    """Keep each optimizer's parameter groups (learning rate, betas, ...), drop its per-weight state."""
    if "optimizer_states" in checkpoint:
        checkpoint["optimizer_states"] = [{**state, "state": {}} for state in checkpoint["optimizer_states"]]
        checkpoint[MOMENTS_KEY] = True


def warn_if_moments_left_out(checkpoint: dict[str, Any]) -> None:
    if checkpoint.get(MOMENTS_KEY):
        warnings.warn(
            "resuming from a checkpoint written with checkpoint.save_optimizer_state=false: the "
            "optimizer's moments start from zero (the learning rate and its schedule continue)",
            stacklevel=2,
        )


def check_weights_fit(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit ``module`` (another model size,
    a LoRA run into a full one or back). The KL reference copy is the exception: it is the initial
    policy, which this run has built from model.name_or_path, so a resume with another
    ``algorithm.beta`` takes it from there (beta from 0) or leaves the saved one (beta to 0)."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        return
    own = module.state_dict()
    for key in [key for key in own if key not in saved and REFERENCE_MARK in key]:
        saved[key] = own[key]
    for key in [key for key in saved if key not in own and REFERENCE_MARK in key]:
        del saved[key]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    mismatched = [key for key in own if key in saved and tuple(own[key].shape) != tuple(saved[key].shape)]
    if missing or unexpected or mismatched:
        if mismatched:
            key = mismatched[0]
            detail = f"{key} is {list(saved[key].shape)} there and {list(own[key].shape)} here"
        else:
            detail = f"{len(missing)} weights missing (e.g. {missing[0]})" if missing else ""
            detail += ", " if missing and unexpected else ""
            detail += f"{len(unexpected)} not in this model (e.g. {unexpected[0]})" if unexpected else ""
        raise ConfigError(
            f"the checkpoint's weights do not fit this model ({detail}): it was written by a run "
            "with another model (model.name_or_path, model.lora.*); resume with the settings it was "
            "started with, or start a new run"
        )


REFERENCE_MARK = ".reference_model."
"""What the KL reference copy's keys hold in a GRPOModule's state dict (CausalLMPolicy.reference_model)."""
