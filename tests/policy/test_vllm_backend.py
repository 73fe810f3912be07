"""generation.backend=vllm: config checks, the mapping to vLLM's API, and the weight sync.

vLLM needs a CUDA GPU, so most tests stand a recording fake in for the ``vllm`` module: it
checks what we send (prompts without padding, sampling parameters, weights under their
Hugging Face names) and when (weights after each optimizer step, before the next draw). The
test at the end runs the real engine where vLLM and a GPU exist, and is skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from grpo_lightning.config import ConfigError, LoRAConfig, ModelConfig, to_train_config
from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.causal_lm import CausalLMPolicy
from grpo_lightning.policy.generation.vllm import VLLMEngineArgs, completion_ids_from_outputs, vllm_sampling_params

EOS = 2  # the arithmetic tokenizer's EOS id (checked in the fixture)


class FakeEngineModel:
    def __init__(self):
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        self.loads.append({name: tensor.clone() for name, tensor in weights})


class FakeLLM:
    """Records the engine arguments, each generate call, weight loads and cache resets."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[list[dict], object]] = []
        self.prefix_cache_resets = 0
        self.engine_model = FakeEngineModel()
        runner = SimpleNamespace(model=self.engine_model)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for index, _ in enumerate(prompts):
            # Alternate: a completion ended by EOS, and one cut at max_tokens.
            if index % 2 == 0:
                completion = SimpleNamespace(token_ids=[5, 6, EOS], finish_reason="stop")
            else:
                completion = SimpleNamespace(token_ids=[7] * sampling_params.max_tokens, finish_reason="length")
            outputs.append(SimpleNamespace(outputs=[completion]))
        return outputs

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.util.spec_from_loader("vllm", loader=None)
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


@pytest.fixture
def policy(arith_policy):
    assert arith_policy.eos_token_ids == [EOS]
    return arith_policy


def _vllm_sampling(**overrides) -> SamplingParams:
    return SamplingParams(4, backend="vllm", vllm_engine=VLLMEngineArgs(0.25, 64), **overrides)


# -- config -------------------------------------------------------------------------------


def test_vllm_backend_without_vllm_is_refused_at_load(compose_config, random_arith_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    with pytest.raises(ConfigError, match=r"generation.backend=vllm needs vLLM.*pip install vllm"):
        to_train_config(compose_config(f"model.name_or_path={random_arith_dir}", "generation.backend=vllm"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.accelerator=cpu", r"runs on CUDA GPUs, not trainer.accelerator=cpu"),
        ("trainer.strategy=fsdp", r"trainer.strategy=fsdp: the weights are sharded"),
        ("generation.vllm_gpu_memory_utilization=1.0", r"vllm_gpu_memory_utilization must be in \(0, 1\)"),
        ("generation.vllm_max_model_len=2", r"vllm_max_model_len=2 leaves no room for a prompt"),
        (
            "data.max_prompt_length=62 generation.vllm_max_model_len=64",
            r"vllm_max_model_len=64 leaves no room for a prompt of data.max_prompt_length=62 tokens",
        ),
    ],
)
def test_vllm_settings_that_cannot_work_are_refused_at_load(
    fake_vllm, compose_config, random_arith_dir, override, message
):
    base = [f"model.name_or_path={random_arith_dir}", "generation.backend=vllm", "trainer.accelerator=gpu"]
    with pytest.raises(ConfigError, match=message):
        to_train_config(compose_config(*base, *override.split()))
    cfg = to_train_config(compose_config(*base))
    assert (cfg.generation.vllm_gpu_memory_utilization, cfg.generation.vllm_max_model_len) == (0.3, None)


# -- the mapping to vLLM's API ----------------------------------------------------------------


def test_sampling_settings_map_to_vllm_parameters():
    sampled = vllm_sampling_params(8, do_sample=True, temperature=0.7, top_p=0.9, top_k=0, eos_token_ids=[2, 9])
    assert sampled == dict(
        n=1, temperature=0.7, top_p=0.9, top_k=-1, max_tokens=8, stop_token_ids=[2, 9], detokenize=False
    )
    assert vllm_sampling_params(8, do_sample=True, temperature=1.0, top_p=1.0, top_k=5, eos_token_ids=[2])["top_k"] == 5
    greedy = vllm_sampling_params(3, do_sample=False, temperature=0.7, top_p=0.9, top_k=5, eos_token_ids=[2])
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (0.0, 1.0, -1)


def test_outputs_become_padded_completion_ids_with_their_eos():
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason=reason)])
        for ids, reason in [([5, 2], "stop"), ([5, 6, 7], "length"), ([8], "stop"), ([], "stop")]
    ]
    ids = completion_ids_from_outputs(outputs, eos_token_ids=[2], pad_token_id=0, device=torch.device("cpu"))
    # [8] stopped without its EOS in token_ids (as some vLLM versions report): EOS put back.
    assert ids.tolist() == [[5, 2, 0], [5, 6, 7], [8, 2, 0], [2, 0, 0]]


def test_policy_samples_through_vllm_with_unpadded_prompts(fake_vllm, policy):
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6="])  # left-padded
    completion_ids = policy.sample(prompt_ids, prompt_mask, _vllm_sampling(temperature=0.5, top_k=3))
    (llm,) = FakeLLM.instances
    assert llm.kwargs["model"] == policy.model.name_or_path
    assert (llm.kwargs["gpu_memory_utilization"], llm.kwargs["max_model_len"]) == (0.25, 64)
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["skip_tokenizer_init"]
    prompts, params = llm.calls[0]
    assert [p["prompt_token_ids"] for p in prompts] == [
        ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)
    ]
    assert (params.temperature, params.top_k, params.max_tokens, params.stop_token_ids) == (0.5, 3, 4, [EOS])
    assert completion_ids.tolist() == [[5, 6, EOS, 0], [7, 7, 7, 7]]


# -- the weight sync ------------------------------------------------------------------------


def test_weights_reach_vllm_before_the_first_draw_and_after_each_update(fake_vllm, policy):
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34="])
    policy.sample(prompt_ids, prompt_mask, _vllm_sampling())
    (llm,) = FakeLLM.instances
    names = [name for name, _ in policy.model.named_parameters()]
    assert len(llm.engine_model.loads) == 1 and list(llm.engine_model.loads[0]) == names
    assert llm.prefix_cache_resets == 1

    policy.sample(prompt_ids, prompt_mask, _vllm_sampling())
    assert len(llm.engine_model.loads) == 1  # nothing changed: no second copy

    with torch.no_grad():
        policy.model.model.norm.weight.add_(1.0)
    policy.weights_updated()
    policy.sample(prompt_ids, prompt_mask, _vllm_sampling())
    assert len(FakeLLM.instances) == 1 and len(llm.engine_model.loads) == 2 and llm.prefix_cache_resets == 2
    torch.testing.assert_close(llm.engine_model.loads[1]["model.norm.weight"], policy.model.model.norm.weight)
    assert not torch.equal(
        llm.engine_model.loads[0]["model.norm.weight"], llm.engine_model.loads[1]["model.norm.weight"]
    )


def test_a_training_step_marks_the_weights_for_the_next_rollout(fake_vllm, policy):
    from grpo_lightning.config import GenerationConfig, GRPOConfig, OptimConfig
    from grpo_lightning.module import GRPOModule
    from grpo_lightning.rewards import WeightedReward

    calls = []
    policy.weights_updated = lambda: calls.append("updated")
    reward = WeightedReward({"length": (lambda prompts, completions, **_: [float(len(c)) for c in completions], 1.0)})
    module = GRPOModule(
        policy,
        reward,
        algorithm=GRPOConfig(group_size=2, beta=0.0, mini_batch_size=2),
        generation=GenerationConfig(max_new_tokens=4, backend="vllm"),
        optim=OptimConfig(lr=1e-2),
    )
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: scheduler
    module.manual_backward = lambda loss: loss.backward()
    module._log_step_metrics = lambda metrics: None
    module._trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=lambda x: x), global_step=0, current_epoch=0
    )
    module.training_step({"prompt": ["12+34=", "5+6="]}, 0)
    assert calls == ["updated", "updated"]  # 4 completions, mini-batches of 2: two optimizer steps


def test_lora_weights_reach_vllm_merged_under_the_base_names(fake_vllm, random_arith_dir):
    policy = CausalLMPolicy.from_config(
        ModelConfig(name_or_path=str(random_arith_dir), lora=LoRAConfig(r=2, alpha=4, target_modules=["q_proj"]))
    )
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # a non-zero adapter, so merged != base
    base = policy.model.get_base_model()
    q_proj = base.model.layers[0].self_attn.q_proj
    base_weight = q_proj.base_layer.weight.clone()
    expected = base_weight + q_proj.get_delta_weight("default")
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34="])
    policy.sample(prompt_ids, prompt_mask, _vllm_sampling())
    (llm,) = FakeLLM.instances
    loaded = llm.engine_model.loads[0]
    assert llm.kwargs["model"] == str(random_arith_dir)
    assert set(loaded) == {
        name
        for name, _ in CausalLMPolicy.from_config(
            ModelConfig(name_or_path=str(random_arith_dir))
        ).model.named_parameters()
    }
    torch.testing.assert_close(loaded["model.layers.0.self_attn.q_proj.weight"], expected)
    assert torch.equal(q_proj.base_layer.weight, base_weight)  # the base (the KL reference) untouched


def test_a_model_built_in_memory_is_saved_for_vllm(fake_vllm, policy):
    policy.model.name_or_path = ""
    policy.model.config._name_or_path = ""
    prompt_ids, prompt_mask = policy.encode_prompts(["1+1="])
    policy.sample(prompt_ids, prompt_mask, _vllm_sampling())
    from pathlib import Path

    saved = Path(FakeLLM.instances[0].kwargs["model"])
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()


# -- the real engine (GPU machines with vLLM only) ------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a CUDA GPU"
)
def test_real_vllm_greedy_matches_the_training_model_after_a_sync(tmp_path):
    from transformers import LlamaForCausalLM

    from grpo_lightning.data.tasks.arithmetic import build_tokenizer, model_config

    torch.manual_seed(0)
    LlamaForCausalLM(model_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    policy = CausalLMPolicy.from_config(ModelConfig(name_or_path=str(tmp_path), dtype="bfloat16")).cuda()
    with torch.no_grad():  # weights that differ from the checkpoint vLLM loads first
        policy.model.model.embed_tokens.weight.mul_(3.0)
    policy.weights_updated()
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6=", "90+9="])
    greedy = dict(do_sample=False, vllm_engine=VLLMEngineArgs(0.2, 64))
    from_vllm = policy.sample(prompt_ids, prompt_mask, SamplingParams(6, backend="vllm", **greedy))
    from_loop = policy.sample(prompt_ids, prompt_mask, SamplingParams(6, backend="loop", do_sample=False))
    # bf16 kernels differ; the first greedy token of each row must agree.
    assert torch.equal(from_vllm[:, 0], from_loop[:, 0])
