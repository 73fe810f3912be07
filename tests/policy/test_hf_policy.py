"""Hugging Face policies end to end on CPU: tiny random Llama and Qwen2, JSONL prompts, LoRA."""

from __future__ import annotations

import csv
import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from grpo_lightning.config import ConfigError, LoRAConfig, ModelConfig
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.run.train import load_config, train
from tests.processes import child_env
from tests.signals import RANDOM_MODEL_SEED

SPECIAL = ("<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """Characters of string.printable, Qwen-style chat markers; no BOS, EOS = <|im_end|>."""
    vocab = {token: i for i, token in enumerate((*SPECIAL, *dict.fromkeys(string.printable)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
    )


def _shape(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny(kind: str, directory: Path) -> Path:
    """A random ``llama`` or ``qwen2`` causal LM with the chat tokenizer, saved to ``directory``."""
    from transformers import AutoModelForCausalLM

    tokenizer = chat_tokenizer()
    config = LlamaConfig(**_shape(tokenizer)) if kind == "llama" else Qwen2Config(**_shape(tokenizer))
    torch.manual_seed(RANDOM_MODEL_SEED)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def math_rows(count: int = 12) -> list[dict]:
    return [
        {"question": f"What is {a} + {a + 1}?", "solution": f"{a} + {a + 1} = {2 * a + 1} #### {2 * a + 1}"}
        for a in range(count)
    ]


SMALL = [
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "data.val_batch_size=4",
    "trainer.limit_val_batches=1",
    "algorithm.group_size=2",
    "generation.max_new_tokens=6",
    "optim.lr=1e-2",
    "checkpoint.enabled=false",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_dir(request, tmp_path_factory) -> Path:
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("llama_only"))


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", math_rows())


def _hf_config(model_dir: Path, data_file: Path, run_dir: Path, *extra: str):
    return load_config(
        [
            f"output_dir={run_dir}",
            "model=hf",
            f"model.name_or_path={model_dir}",
            "data=jsonl",
            f"data.path={data_file}",
            "data.prompt_key=question",
            "data.answer_key=solution",
            "reward=gsm8k",
            "reward.functions.length_penalty.kwargs.cache_length=2",
            *SMALL,
            *extra,
        ]
    )


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _logged(rows, name) -> bool:
    return any(row.get(name) not in (None, "") for row in rows)


def _reload_and_generate(policy_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    ids = tokenizer(["What is 1 + 2?"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_train_chat_prompts_change_parameters_log_and_export(tiny_dir, prompts_file, tmp_path):
    if tiny_dir.name.startswith("qwen2"):  # a chat-format prompt column
        rows = [row | {"question": [{"role": "user", "content": row["question"]}]} for row in math_rows()]
        prompts_file = write_jsonl(tmp_path / "chat.jsonl", rows)
    run_dir = tmp_path / "run"
    cfg = _hf_config(
        tiny_dir,
        prompts_file,
        run_dir,
        "data.apply_chat_template=true",
        "data.system_prompt=Answer in tags.",
        "algorithm.beta=0.04",
    )
    metrics = train(cfg)
    rows = _metrics(run_dir)
    for name in (
        "actor/policy_loss",
        "actor/grpo_kl",
        "reward/math/mean",
        "reward/format/mean",
        "reward/length_penalty/mean",
        "val/reward/mean",
        "val/reward/math/mean",
    ):
        assert _logged(rows, name), f"{name} never logged"
    assert "val/reward/mean" in metrics
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(run_dir / "policy" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    _reload_and_generate(run_dir / "policy")


def test_lora_trains_only_adapters_and_keeps_one_copy_of_the_base(llama_dir):
    cfg = ModelConfig(name_or_path=str(llama_dir), lora=LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    policy = CausalLMPolicy.from_config(cfg)
    base_count = sum(p.numel() for name, p in policy.named_parameters() if "lora_" not in name)
    policy.enable_reference()
    assert policy.reference_model is None and policy.reference_is_base
    assert sum(p.numel() for name, p in policy.named_parameters() if "lora_" not in name) == base_count
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    from grpo_lightning.types import TokenBatch

    ids, mask = policy.encode_prompts(["What is 1 + 2?", "Hi"])
    completion = torch.randint(5, 50, (2, 3))
    batch = TokenBatch(ids, mask, completion, torch.ones_like(completion))
    # Give the adapters weight, so the adapted policy differs from the reference.
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        ref, _ = policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False, reference=True)
        cur, _ = policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
        base = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(llama_dir)))
        expected, _ = base.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    torch.testing.assert_close(ref, expected)
    assert not torch.allclose(cur, ref)


@pytest.fixture
def capture_policy(monkeypatch):
    """Records the policy train() builds and its parameters before training."""
    import grpo_lightning.run.train as train_module

    captured = {}

    class Capturing(train_module.GRPOModule):
        def __init__(self, policy, *args, **kwargs):
            super().__init__(policy, *args, **kwargs)
            captured["policy"] = policy
            captured["start"] = {n: p.detach().clone() for n, p in policy.named_parameters()}

    monkeypatch.setattr(train_module, "GRPOModule", Capturing)
    return captured


def test_lora_run_changes_only_adapters_and_exports_them(llama_dir, prompts_file, tmp_path, capture_policy):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    train(
        _hf_config(
            llama_dir,
            prompts_file,
            run_dir,
            "model.lora.r=4",
            "model.lora.alpha=8",
            "algorithm.beta=0.04",
            "model.lora.save_merged=false",
        )
    )
    policy = capture_policy["policy"]
    assert policy.reference_model is None  # the KL reference was the base model, adapters disabled
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, capture_policy["start"][n])}
    assert changed and all("lora_" in n for n in changed), changed
    assert _logged(_metrics(run_dir), "actor/grpo_kl")
    policy_dir = run_dir / "policy"
    assert (policy_dir / "adapter_config.json").is_file() and not (policy_dir / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), policy_dir)
    trained = dict(policy.model.named_parameters())
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, trained[name])


def test_lora_merged_export_reloads_without_peft(llama_dir, prompts_file, tmp_path):
    run_dir = tmp_path / "run"
    train(
        _hf_config(
            llama_dir,
            prompts_file,
            run_dir,
            "model.lora.r=4",
            "model.lora.alpha=8",
            "model.lora.target_modules=[q_proj,v_proj]",
            "algorithm.beta=0.0",
            "model.gradient_checkpointing=true",
        )
    )
    policy_dir = run_dir / "policy"
    assert not (policy_dir / "adapter_config.json").exists()
    before, after = load_file(llama_dir / "model.safetensors"), load_file(policy_dir / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    _reload_and_generate(policy_dir)


def test_missing_model_and_data_paths_fail_at_start(llama_dir, prompts_file, tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path"):
        train(_hf_config(tmp_path / "nowhere", prompts_file, tmp_path / "a"))
    with pytest.raises(ConfigError, match="model.name_or_path='no-such-org/no-such-model' could not be loaded"):
        train(_hf_config("no-such-org/no-such-model", prompts_file, tmp_path / "d"))
    with pytest.raises(ConfigError, match="data.path"):
        train(_hf_config(llama_dir, tmp_path / "missing.jsonl", tmp_path / "b"))
    with pytest.raises(ConfigError, match="data.prompt_key='prompt' is not a column"):
        train(_hf_config(llama_dir, prompts_file, tmp_path / "e", "data.prompt_key=prompt"))
    with pytest.raises(ConfigError, match="data.val_path"):
        train(_hf_config(llama_dir, prompts_file, tmp_path / "c", f"data.val_path={tmp_path / 'no.csv'}"))


def test_validation_sampling_logs_pass_at_k_in_bfloat16(llama_dir, prompts_file, tmp_path):
    run_dir = tmp_path / "run"
    train(
        _hf_config(
            llama_dir,
            prompts_file,
            run_dir,
            "trainer.max_steps=1",
            "generation.val_do_sample=true",
            "generation.val_num_samples=3",
            "generation.val_pass_reward=math",
            "model.dtype=bfloat16",
            "model.attn_implementation=eager",
        )
    )
    rows = _metrics(run_dir)
    assert _logged(rows, "val/pass@3") and _logged(rows, "val/reward/math/mean")


@pytest.mark.slow
def test_cli_subprocess(llama_dir, prompts_file, tmp_path):
    env = child_env()
    args = [
        "model=hf",
        f"model.name_or_path={llama_dir}",
        "data=jsonl",
        f"data.path={prompts_file}",
        "data.prompt_key=question",
        "data.answer_key=solution",
        "reward=gsm8k",
        "reward.functions.length_penalty.kwargs.cache_length=2",
        f"hydra.run.dir={tmp_path / 'cli'}",
        *SMALL,
    ]
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lightning.run.train", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cli" / "policy" / "config.json").is_file()
    assert "GRPO finished" in result.stdout


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_dropout_is_off_so_two_passes_agree(tmp_path, disable_dropout):
    """A checkpoint with attention dropout: by default it is zeroed at load, so two
    training-mode passes over the same tokens give the same log-probs (the old/new ratio is 1)."""
    from transformers import AutoModelForCausalLM

    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.causal_lm import CausalLMPolicy
    from grpo_lightning.types import TokenBatch

    tokenizer = chat_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2Config(**_shape(tokenizer), attention_dropout=0.3)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(tmp_path), disable_dropout=disable_dropout))
    policy.train()
    prompt_ids, prompt_mask = policy.encode_prompts(["2+2=", "3+5="])
    completion_ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    batch = TokenBatch(prompt_ids, prompt_mask, completion_ids, torch.ones_like(completion_ids))
    first, second = (
        policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)[0].detach() for _ in range(2)
    )
    assert torch.equal(first, second) == disable_dropout
    assert policy.model.config.attention_dropout == 0.3  # the exported config keeps its value


def test_disable_dropout_zeroes_dropout_modules():
    from grpo_lightning.policy.causal_lm import disable_dropout

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    disable_dropout(model.train())
    x = torch.ones(64, 2)
    assert torch.equal(model(x), model(x)) and model[1].p == 0.0


def test_a_policy_written_against_the_old_scoring_name_still_serves_both_names(arith_policy):
    """``token_scores`` was ``logprobs_and_entropy``'s name: a subclass overriding it still scores
    through the module's call, ``super()`` reaches the parent, and the old call still answers."""
    from grpo_lightning.types import TokenBatch

    class OldStylePolicy(CausalLMPolicy):
        calls = 0

        def token_scores(self, batch, **options):
            OldStylePolicy.calls += 1
            return super().token_scores(batch, **options)

    old = OldStylePolicy(arith_policy.model, arith_policy.tokenizer)
    gen = torch.Generator().manual_seed(0)
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["1+2=", "3+4="])
    completion_ids = torch.randint(5, 15, (2, 3), generator=gen)
    batch = TokenBatch(prompt_ids, prompt_mask, completion_ids, torch.ones_like(completion_ids))
    expected, _ = arith_policy.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    through_new_name, _ = old.logprobs_and_entropy(batch, temperature=1.0, with_entropy=False)
    through_old_name, _ = arith_policy.token_scores(batch, temperature=1.0, with_entropy=False)
    assert OldStylePolicy.calls == 1
    torch.testing.assert_close(through_new_name, expected)
    torch.testing.assert_close(through_old_name, expected)


def test_the_reference_copy_refreshes_toward_the_model(random_arith_dir):
    """refresh_reference(mix): reference <- mix * model + (1 - mix) * reference, tied weights once."""
    from grpo_lightning.config import ModelConfig
    from grpo_lightning.policy.causal_lm import CausalLMPolicy

    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(random_arith_dir)))
    policy.enable_reference()
    with torch.no_grad():
        for parameter in policy.model.parameters():
            parameter.add_(1.0)
    start = [reference.clone() for reference, _ in policy.reference_pairs()]
    policy.refresh_reference(0.25)
    for (reference, current), before in zip(policy.reference_pairs(), start):
        torch.testing.assert_close(reference, 0.25 * current + 0.75 * before)
    policy.refresh_reference(1.0)
    assert all(torch.equal(reference, current) for reference, current in policy.reference_pairs())


def test_trl_reward_functions_work_unchanged_from_the_command_line(llama_dir, tmp_path):
    """The issue's command: TRL's think_format_reward reads completion[0]["content"] (TRL calls it with
    keywords, chat completions as message lists); it used to stop the run with a positional call."""
    pytest.importorskip("trl")
    rows = [row | {"question": [{"role": "user", "content": row["question"]}]} for row in math_rows()]
    run_dir = tmp_path / "run"
    cfg = _hf_config(
        llama_dir,
        write_jsonl(tmp_path / "chat.jsonl", rows),
        run_dir,
        "data.apply_chat_template=true",
        "+reward.functions.think={fn:trl.rewards.think_format_reward,weight:0.5}",
    )
    train(cfg)
    values = [float(row["reward/think/mean"]) for row in _metrics(run_dir) if row.get("reward/think/mean")]
    assert len(values) == 2 and all(0 <= value <= 1 for value in values)
