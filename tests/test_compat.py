"""Every private API that grpo_lightning/compat.py touches, checked against the installed library: when
Lightning, torch, transformers, accelerate or OmegaConf change it, the test named after the access
fails here, not a training run somewhere else."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Optional

import lightning as L
import pytest
import torch
from omegaconf import MISSING, OmegaConf
from torch import nn

from grpo_lightning import compat


class OneStep(L.LightningModule):
    """One manual optimizer step on a linear layer, logged like GRPOModule logs."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        self.manual_backward(self.layer(batch).sum())
        optimizer.step()
        optimizer.zero_grad()
        compat.log_step_metrics(self.trainer, {"seen": torch.tensor(1.0)}, step=batch_idx + 1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def trained(tmp_path):
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    module = OneStep()
    assert not compat.has_trainer(module)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2))
    return trainer, module


def test_lightning_trainer_attachment_logger_connector_and_logged_steps(trained, tmp_path):
    trainer, module = trained
    assert compat.has_trainer(module)
    assert trainer.callback_metrics["seen"] == 1.0  # log_step_metrics reached the callback metrics
    assert compat.logged_steps(trainer) == 2
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    checkpoint = torch.load(tmp_path / "two.ckpt", weights_only=False)
    assert compat.logged_steps_in_checkpoint(checkpoint) == 2
    assert compat.steps_trained_in_checkpoint(checkpoint) == 3  # no count of ours: Lightning's + 1
    assert compat.steps_trained_in_checkpoint({**checkpoint, compat.STEPS_TRAINED_KEY: 2}) == 2


def test_lightning_epoch_loop_still_has_the_off_schedule_validation_flag(trained):
    trainer, _ = trained
    epoch_loop = trainer.fit_loop.epoch_loop
    assert hasattr(epoch_loop, "_skip_next_val"), "Lightning renamed it: PreemptionCallback would validate again"
    compat.skip_next_validation(trainer)
    assert epoch_loop._skip_next_val is True


def test_torch_fused_adamw_devices_hooks_and_compile():
    assert compat.fused_adamw_supported([nn.Parameter(torch.zeros(2))])
    assert not compat.fused_adamw_supported([nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    assert not compat.fused_adamw_supported([])
    layer = nn.Linear(2, 2)
    assert compat.forward_hook_ids(layer) == set()
    handle = layer.register_forward_hook(lambda *args: None)
    pre = layer.register_forward_pre_hook(lambda *args: None)
    assert compat.forward_hook_ids(layer) == {handle.id, pre.id}
    assert not compat.is_compiled(layer)
    layer.compile()  # compiles lazily, at the first call: nothing runs here
    assert compat.is_compiled(layer)


def test_transformers_require_grads_hook_and_accelerate_hook():
    from accelerate.hooks import ModelHook, add_hook_to_module
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    assert compat.require_grads_hook_ids(model) == set()
    model.enable_input_require_grads()
    embedding = model.get_input_embeddings()
    hook_ids = compat.require_grads_hook_ids(model)
    assert hook_ids and hook_ids <= compat.forward_hook_ids(embedding)  # it is the embedding's hook
    assert not compat.accelerate_hooked(embedding)
    add_hook_to_module(embedding, ModelHook())
    assert compat.accelerate_hooked(embedding)


def test_transformers_kv_cache_keyword_fills_the_cache_without_a_deprecation_warning():
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    wrapped = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    assert compat.kv_cache_keyword(wrapped) == compat.kv_cache_keyword(model)  # read through the wrapper
    cache = DynamicCache(config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated keyword warns: here it fails
        model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{compat.kv_cache_keyword(model): cache})
    assert cache.get_seq_length() == 3
    assert compat.kv_cache_keyword(nn.Linear(2, 2)) == "past_key_values"  # not a Hugging Face model


def test_transformers_gguf_progress_bar_follows_the_progress_bar_switch():
    pytest.importorskip("gguf")
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as transformers_logging

    compat.gguf_dequantized()
    compat.gguf_dequantized()  # wrapped once, not twice
    assert gguf_utils.tqdm.follows_transformers_switch
    was_enabled = transformers_logging.is_progress_bar_enabled()
    try:
        transformers_logging.disable_progress_bar()
        assert gguf_utils.tqdm([1, 2], desc="de-quantizing").disable
        transformers_logging.enable_progress_bar()
        assert not gguf_utils.tqdm([1, 2], desc="de-quantizing", file=io.StringIO()).disable
    finally:
        (transformers_logging.enable_progress_bar if was_enabled else transformers_logging.disable_progress_bar)()


@dataclass
class Inner:
    value: int = 1


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    absent: Optional[Inner] = None
    required: Inner = MISSING


def test_omegaconf_child_nodes():
    node = OmegaConf.structured(Outer)
    assert compat.child_config(node, "inner").value == 1
    assert compat.child_config(node, "absent") is None
    assert compat.child_config(node, "required") is None
