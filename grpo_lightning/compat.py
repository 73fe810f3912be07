"""Every use of another library's private API, in one place.

When Lightning, torch, transformers, accelerate or OmegaConf change underneath us, this is the file
that breaks, and tests/test_compat.py says which access did. Each function names the version it
was written against and why the public API does not serve.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

# -- Lightning (written against lightning 2.6.6) ---------------------------------------------------


def has_trainer(module: L.LightningModule) -> bool:
    """Whether ``module`` is attached to a Trainer; ``module.trainer`` raises when it is not.
    (``LightningModule._trainer``)"""
    return module._trainer is not None


def log_step_metrics(trainer: L.Trainer, metrics: dict[str, Tensor], step: int) -> None:
    """What ``LightningModule.log_dict(metrics, on_step=True, on_epoch=False)`` does for step-only
    values, for a fraction of its cost: log_dict moves a torchmetrics state to the value's device for
    every key (benchmarks/bench_logging.py). The values join ``trainer.callback_metrics`` (what
    callbacks, checkpoint monitors and the run summary read), and on the steps Lightning would log
    (``trainer.log_every_n_steps``) its logger connector sends them to every logger at the same step,
    with the same ``epoch`` key, at ``step`` (Lightning's own step, :func:`logged_steps`, is one
    behind inside ``fit`` and can slip on a resume). (``Trainer._logger_connector``:
    ``should_update_logs``, ``log_metrics``)"""
    trainer.callback_metrics.update(metrics)
    connector = trainer._logger_connector
    if connector.should_update_logs or trainer.fast_dev_run:
        connector.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)


def log_validation_metrics(trainer: L.Trainer, metrics: dict[str, Tensor], step: int) -> None:
    """What ``LightningModule.log_dict(metrics, on_epoch=True)`` does at the end of a validation
    whose values are already reduced over processes, logged at ``step`` rather than at the step
    Lightning would give it. (``Trainer._logger_connector.log_metrics``)"""
    trainer.callback_metrics.update(metrics)
    trainer._logger_connector.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)


def skip_next_validation(trainer: L.Trainer) -> None:
    """Stop Lightning from running the validation it squeezes in when ``should_stop`` is set
    mid-epoch (a pre-empted machine is going away). A no-op where the attribute is gone.
    (``_TrainingEpochLoop._skip_next_val``)"""
    epoch_loop = trainer.fit_loop.epoch_loop
    if hasattr(epoch_loop, "_skip_next_val"):
        epoch_loop._skip_next_val = True


def logged_steps(trainer: L.Trainer) -> int:
    """The step Lightning's loggers are at: batches that stepped an optimizer, which WandbLogger
    uses as ``trainer/global_step``. (``_TrainingEpochLoop._batches_that_stepped``)"""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def logged_steps_in_checkpoint(checkpoint: dict[str, Any]) -> int:
    """:func:`logged_steps` as a checkpoint saved it (the loop's state dict; KeyError if absent)."""
    return checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]


STEPS_TRAINED_KEY = "steps_trained"
"""Where GRPOModule keeps its count of training steps in a checkpoint."""


def steps_trained_in_checkpoint(checkpoint: dict[str, Any]) -> int:
    """The training steps a checkpoint holds: GRPOModule's own count, or for checkpoints written
    before it kept one, Lightning's count of the batches logged, which is saved before it counts
    the step the checkpoint was written at."""
    if STEPS_TRAINED_KEY in checkpoint:
        return checkpoint[STEPS_TRAINED_KEY]
    return logged_steps_in_checkpoint(checkpoint) + 1


# -- torch (written against torch 2.13.0) -----------------------------------------------------------


def fused_adamw_supported(params: Iterable[nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes these parameters: its own device check
    (``torch.optim.optimizer._get_fused_kernels_supported_devices``) and dtypes."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    params = list(params)
    return bool(params) and all(
        p.device.type in devices and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params
    )


def forward_hook_ids(module: nn.Module) -> set[int]:
    """The handles of the forward hooks and pre-hooks registered on ``module`` itself: a module with
    hooks cannot be stood in for by a fused function (``nn.Module._forward_hooks``,
    ``_forward_pre_hooks``)."""
    return set(module._forward_hooks) | set(module._forward_pre_hooks)


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called on it (``nn.Module._compiled_call_impl``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


# -- transformers (written against transformers 5.24.0) and accelerate (1.16.0) --------------------


def require_grads_hook_ids(model: nn.Module) -> set[int]:
    """The handles of the hook ``PreTrainedModel.enable_input_require_grads`` puts on the input
    embedding (gradient checkpointing installs it); empty if there is none.
    (``PreTrainedModel._require_grads_hooks``, a list of handles since transformers 5)"""
    hooks = getattr(model, "_require_grads_hooks", None) or ()
    return {handle.id for handle in hooks}


def accelerate_hooked(module: nn.Module) -> bool:
    """Whether accelerate replaced ``module``'s forward (``device_map`` offloading, ``add_hook_to_module``)
    (``module._hf_hook``)."""
    return hasattr(module, "_hf_hook")


def kv_cache_keyword(model: nn.Module) -> str:
    """The keyword under which ``model``'s forward takes a KV cache: ``cache`` in transformers 5.2x
    (written against 5.24, where ``past_key_values`` still works with a warning until 5.40),
    ``past_key_values`` before. Read from the signature of the first Hugging Face model class in
    ``model`` (a peft wrapper's forward takes ``**kwargs`` and passes them on)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return _cache_keyword_of(type(module))
    return "past_key_values"


@functools.cache
def _cache_keyword_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def gguf_dequantized() -> dict[str, Any]:
    """``from_pretrained`` options that load a GGUF file as a plain float model. Since transformers
    5.2x (written against 5.24) a GGUF load keeps a ``GgufHfQuantizer`` on the model even after
    dequantizing every weight (no ``kernels`` package), and ``save_pretrained`` then refuses ("is
    quantized with gguf and is not serializable"); asking for ``GgufConfig(dequantize=True)``
    makes the loader drop it. Older releases always dequantized and kept no quantizer: no options."""
    import transformers

    _gguf_progress_follows_transformers_switch()
    config = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": config(dequantize=True)} if config is not None else {}


def _gguf_progress_follows_transformers_switch() -> None:
    """transformers' GGUF loader draws its "de-quantizing" bar with plain ``tqdm``, a global of
    ``transformers.modeling_gguf_pytorch_utils`` (written against 5.24), so
    ``transformers.utils.logging.disable_progress_bar`` does not reach it: wrap that global to
    obey the switch. A no-op where the module or its global is gone."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return
    draw = getattr(gguf_utils, "tqdm", None)
    if draw is None or getattr(draw, "follows_transformers_switch", False):
        return
    from transformers.utils import logging as transformers_logging

    def obeying_the_switch(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disable", not transformers_logging.is_progress_bar_enabled())
        return draw(*args, **kwargs)

    obeying_the_switch.follows_transformers_switch = True
    gguf_utils.tqdm = obeying_the_switch


# -- OmegaConf (written against omegaconf 2.3.1) ----------------------------------------------------


def child_config(node: DictConfig, key: str) -> DictConfig | None:
    """The child of ``node`` at ``key`` as a DictConfig that holds values, without resolving
    interpolations or materialising a MISSING or None one (``DictConfig._get_node``,
    ``_is_missing``, ``_is_none``); None for anything else."""
    child = node._get_node(key)
    if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
        return child
    return None
