"""Typed configuration schemas, one dataclass per Hydra group.

Every field is documented once, here. Hydra merges the YAML files under ``conf/`` onto these
schemas (``conf/config.yaml`` lists ``train_schema`` first in its defaults), so an unknown key
or a value of the wrong type fails when the config is composed, before anything is built.
Constraints that a type cannot express (``group_size >= 2``, divisibility of batch sizes) are
checked by :func:`validate_config`, which names the offending field and the fix.

References used below:
  [GRPO]  Shao et al. 2024, DeepSeekMath, arXiv:2402.03300 (group-relative advantages, k3 KL).
  [PPO]   Schulman et al. 2017, arXiv:1707.06347 (clipped surrogate).
  [k3]    Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


@dataclass
class GRPOConfig:
    """The algorithm: group sampling, advantages and the clipped-surrogate update."""

    group_size: int = 4
    """Completions sampled per prompt (G in [GRPO]); advantages are normalized within each group."""
    clip_range: float = 0.2
    """PPO clip epsilon [PPO]: the ratio pi/pi_old is clipped to [1 - clip_range, 1 + clip_range]."""
    beta: float = 0.01
    """Weight of the k3 KL penalty to the frozen reference policy [GRPO eq. 3, k3]. 0 disables
    the penalty and the reference model is neither built nor run."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (subtracted from the loss). Entropy is logged either way."""
    normalize_by_std: bool = True
    """Divide group-centred rewards by the group's population std [GRPO]. False keeps only the
    mean baseline, as Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) recommends."""
    adv_eps: float = 1e-8
    """Added to the group std before dividing, so near-constant groups stay finite."""
    adv_estimator: str = "grpo_vectorized"
    """Name in the advantage-estimator registry (``grpo_lightning.advantages``)."""
    num_iterations: int = 1
    """Passes over each generated batch (mu in [GRPO] Algorithm 1). Old log-probs are taken once
    per batch; with 1 pass and 1 mini-batch they equal the current ones and are not recomputed."""
    mini_batch_size: Optional[int] = None
    """Completions per optimizer step; None means the whole batch (data.batch_size * group_size)."""
    micro_batch_size: Optional[int] = None
    """Completions per forward/backward (gradient accumulation inside a mini-batch, for memory);
    None means the whole mini-batch. Does not change the result, only peak memory."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this before each optimizer step; None disables clipping
    (the norm is still logged as actor/grad_norm)."""
    scale_rewards: Optional[str] = None
    """How group-centred rewards are scaled: ``group`` (the group's std [GRPO]), ``batch`` (the
    batch's std of the centred rewards, as REINFORCE++-baseline), ``none`` (no scaling [Dr. GRPO]).
    None follows normalize_by_std. Only for estimators that take a scale (grpo, grpo_vectorized and
    custom ones registered with scale_rewards=True)."""
    gamma: float = 1.0
    """Discount of token-level (process) rewards: per-token returns sum_k gamma^k r_{t+k}. Applies to
    batches that carry ``token_rewards`` (rollouts from elsewhere); outcome rewards have none."""
    policy_loss: str = "clip"
    """Name in the policy-loss registry (``grpo_lightning.losses``): ``clip`` [PPO], ``gspo``
    (Zheng et al. 2025, arXiv:2507.18071), ``cispo`` (MiniMax 2025, arXiv:2506.13585)."""
    clip_range_low: Optional[float] = None
    """Lower clip epsilon: ratios below 1 - clip_range_low are clipped. None means clip_range."""
    clip_range_high: Optional[float] = None
    """Upper clip epsilon; DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476) uses 0.28 with
    clip_range_low 0.2 to keep exploration alive. None means clip_range."""
    clip_ratio_c: Optional[float] = None
    """Dual-clip constant c > 1 (Ye et al. 2020, arXiv:1912.09729): for negative advantages the
    per-token loss is capped at -c * A. None disables it. Only with policy_loss=clip."""
    loss_agg: str = "seq-mean-token-mean"
    """How per-token losses become one number: ``seq-mean-token-mean`` [GRPO], ``token-mean``
    [DAPO], ``seq-mean-token-sum``, ``seq-mean-token-sum-norm`` (token sum / max_new_tokens
    [Dr. GRPO]). Length bias of each: docs/algorithms.md."""
    kl_estimator: str = "k3"
    """Per-token KL estimator to the reference [k3]: ``k1``, ``k2`` or ``k3``. Needs beta > 0."""
    kl_in_reward: bool = False
    """Subtract beta * sum_t KL_t from each completion's reward (before advantages) instead of
    adding the KL to the loss. Needs beta > 0."""
    filter_zero_std_groups: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) and sample more
    prompts until data.batch_size groups remain, for up to max_generation_rounds rounds."""
    max_generation_rounds: Optional[int] = None
    """Most generation rounds per training step under filter_zero_std_groups (None: 3). If the batch
    is still short, it is filled with dropped groups (their advantages are 0)."""
    overlong_buffer_frac: Optional[float] = None
    """DAPO soft overlong punishment: the last overlong_buffer_frac * max_new_tokens tokens (at least
    1) are a buffer in which the reward gets a penalty growing linearly to -overlong_penalty_factor
    at max_new_tokens (DAPO: 4096 of 20480 tokens, 0.2). None disables it."""
    overlong_penalty_factor: float = 1.0
    """Largest overlong penalty (at max_new_tokens). Only with overlong_buffer_frac."""
    mask_truncated_completions: bool = False
    """Exclude completions cut at max_new_tokens (no EOS) from the loss [DAPO overlong filtering]."""
    max_consecutive_skips: int = 3
    """An update whose loss or gradient norm is NaN/inf is skipped and counted in
    actor/skipped_updates; this many skips in a row are tolerated, one more stops the run
    (0: stop at the first). See grpo_lightning/numerics.py."""


@dataclass
class GenerationConfig:
    """Sampling of completions during training and validation."""

    max_new_tokens: int = 8
    """Longest completion; completions cut here count in response_length/clip_ratio."""
    temperature: float = 1.0
    """Sampling temperature. The log-probs in the loss are those of this distribution
    (logits / temperature), so the ratio compares like with like."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    val_do_sample: bool = False
    """Validation samples with the settings above when true; greedy decoding when false."""
    val_num_samples: int = 1
    """Completions per validation prompt (k). With k > 1 (which needs val_do_sample=true)
    val/reward/* average all k and ``val/pass@<k>`` is logged: the fraction of prompts with at
    least one passing completion (Chen et al. 2021, arXiv:2107.03374)."""
    val_pass_reward: Optional[str] = None
    """Reward function (a name under reward.functions) that decides whether a validation
    completion passes, for pass@k; None judges the total reward. Setting it also logs
    ``val/pass@1`` when val_num_samples is 1."""
    val_pass_threshold: float = 1.0
    """A completion passes when the judged reward is >= this value."""
    backend: str = "auto"
    """How completions are sampled: "loop" (grpo_lightning/generation_loop.py: a lean KV-cache
    loop that prefills each distinct prompt once and draws each token by inverting the cumulative
    distribution: generate's distribution, not its random stream; for the decoder-only types in
    generation_loop.LOOP_MODEL_TYPES: Llama, Qwen2/3, Mistral),
    "hf" (transformers' ``model.generate``, any model), "auto": loop where supported, else hf, or
    "vllm": a vLLM engine colocated on the training GPU, its weights synced after every optimizer
    step (grpo_lightning/vllm_backend.py; needs ``pip install vllm`` and a CUDA GPU)."""
    vllm_gpu_memory_utilization: float = 0.3
    """With backend=vllm: the fraction of the GPU's memory vLLM takes for its weights and KV
    cache (vLLM's ``gpu_memory_utilization``); the rest is left to training."""
    vllm_max_model_len: Optional[int] = None
    """With backend=vllm: the longest prompt + completion vLLM plans its KV cache for; None
    takes the model's context length (lower it when the KV cache does not fit)."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (stepped once per optimizer step)."""

    lr: float = 1e-6
    """Peak learning rate (AdamW, Loshchilov & Hutter 2019, arXiv:1711.05101). 1e-6 is the usual
    full fine-tuning rate for 0.5-7B LLMs under GRPO; the tiny built-in task uses 3e-4."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 keeps the policy's weights where the rewards take them."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's moment decay rates (beta1, beta2), each in [0, 1)."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps, then constant."""
    fused: Optional[bool] = None
    """AdamW's fused kernel (``torch.optim.AdamW(fused=True)``): one kernel over all parameters
    instead of a Python loop over them, the same update up to rounding. None uses it where the
    parameters' device and dtype allow; true insists (an error where they do not)."""


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685) through peft. Only the adapters
    train; the KL reference is the same model with the adapters disabled, so no second copy of
    the base weights is held."""

    r: int = 0
    """Adapter rank; 0 trains the full model (no LoRA)."""
    alpha: float = 16.0
    """Scaling numerator: the adapter update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: Optional[List[str]] = None
    """Module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; None adapts
    every linear layer except the output head (peft's "all-linear")."""
    save_merged: bool = True
    """Export the final policy with the adapters merged into the weights (a plain checkpoint);
    false writes the adapters alone (adapter_config.json, loaded on top of the base model)."""


@dataclass
class ModelConfig:
    """The policy: a causal LM loaded with ``AutoModelForCausalLM.from_pretrained``."""

    name_or_path: str = MISSING
    """Hugging Face hub id or local directory. ``${asset:NAME}`` resolves to a checkpoint shipped
    inside this package (the embedded default)."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    attn_implementation: Optional[str] = None
    """Passed to from_pretrained (eager, sdpa, flash_attention_2); None lets transformers pick."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint's repository (needed by some hub models)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    disable_dropout: bool = True
    """Zero the model's own dropout (nn.Dropout modules and attention dropout) at load, as verl
    and OpenRLHF do: with dropout, two passes over the same tokens differ, so the old/new ratio
    is not 1 where the policy has not moved and the KL to the reference is noise. LoRA's own
    dropout (model.lora.dropout) is applied as set. The exported config keeps its values."""
    logprob_chunk_size: Optional[int] = None
    """Completions per chunk when turning logits into log-probs and entropy, so the float32
    log-softmax over the vocabulary is never held for the whole batch at once. None (default):
    as many as keep a chunk's float32 logits, for completions of generation.max_new_tokens, within
    4 MiB on a CPU and 1 GiB on an accelerator, or within a quarter of the output head's float32
    weight where that is more (grpo_lightning/logprobs.py: completions_per_chunk)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Train low-rank adapters instead of the full model (model.lora.r > 0)."""
    chunked_lm_head: bool = True
    """Apply the output head to the decoder's hidden states ``logprob_chunk_size`` completions at
    a time, so the [B, T, vocab] logits (and their gradient) never exist for the whole batch.
    Used for model types whose logits are the plain head output (Llama, Qwen2/3, Mistral); other
    models fall back to full logits, chunked only in the log-softmax. Same numbers either way."""
    share_prompts: Optional[bool] = None
    """Score each distinct prompt of a batch once: its keys and values go to a KV cache that all
    of its completions attend to, so the prompt costs 1/G of a full pass, forward and backward
    (the numbers are the same up to float rounding). Needs the KV cache in training mode, which
    gradient checkpointing switches off: None (default) shares unless
    model.gradient_checkpointing is on; true requires it; false always runs the full pass."""
    length_buckets: Optional[int] = None
    """At most this many groups of rows of similar completion length per scoring pass, each
    trimmed to its own longest completion and prompt, so no work is spent on the padding after
    short completions (grpo_lightning/buckets.py). A pass is split only when that cuts its cost
    by a quarter or more; 1 always scores one padded block. Same log-probs either way. None: 4,
    or 1 under FSDP/DeepSpeed ZeRO-3, whose collectives need every process to make the same forward
    calls while each decides its split from its own completions."""
    compile: bool = False
    """``torch.compile`` the decoder (dynamic shapes) for generation and scoring. Costs a
    compilation at the first steps (and a C++ compiler on CPU); pays off on a GPU with a
    model large enough for kernel fusion to matter."""


@dataclass
class DataConfig:
    """Prompts: where they come from and how many go into one training step."""

    builder: Optional[str] = None
    """Import path of a function returning (train_rows, val_rows), each a list of dicts with a
    prompt column and any other columns (passed to reward functions as keyword lists). Set
    either this or ``path``."""
    builder_kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the builder."""
    prompt_key: str = "prompt"
    """Column holding the prompt text."""
    batch_size: int = 8
    """Prompts per training step; each yields group_size completions."""
    val_batch_size: int = 64
    """Prompts per validation batch."""
    shuffle: bool = True
    """Shuffle training prompts each epoch (seeded by ``seed``)."""
    num_workers: int = 0
    """DataLoader worker processes (prompts are small; 0 is usually fastest)."""
    path: Optional[str] = None
    """Prompt file (JSONL, JSON, CSV or Parquet, by extension) or, with data=hf, a dataset
    directory or hub id, read with the ``datasets`` library. Set either this or ``builder``."""
    config_name: Optional[str] = None
    """Dataset configuration of a hub dataset (e.g. ``main`` for openai/gsm8k)."""
    split: str = "train"
    """Split of ``path`` used for training."""
    val_split: Optional[str] = None
    """Split of ``path`` used for validation (e.g. ``test``); else val_path or val_fraction."""
    val_path: Optional[str] = None
    """Separate validation file, in the same formats as ``path``."""
    val_fraction: float = 0.05
    """Without val_split or val_path: this fraction of the shuffled training rows is held out."""
    max_val_prompts: Optional[int] = None
    """Keep at most this many validation prompts (after shuffling); None keeps all."""
    answer_key: Optional[str] = None
    """Column with the reference answer; renamed to ``answer``, the keyword built-in rewards
    read. None leaves the columns as they are."""
    apply_chat_template: bool = False
    """Format each prompt with the tokenizer's chat template (user turn + generation prompt).
    Needed for instruct models, and for chat-format prompts (lists of role/content messages)."""
    system_prompt: Optional[str] = None
    """System message put before each prompt by the chat template."""
    max_prompt_length: Optional[int] = None
    """Longest prompt in tokens (after formatting); None keeps every prompt whole."""
    overlong_prompts: str = "drop"
    """What to do with prompts longer than max_prompt_length: ``drop`` them (the count is
    logged) or ``truncate`` them, keeping their last tokens (where generation starts)."""
    overfit_rows: Optional[int] = None
    """Train and validate on the first N training rows only (``debug=overfit``): a pipeline that
    cannot drive the reward up on a few memorisable prompts has a bug. None uses the splits."""


@dataclass
class RewardFunctionConfig:
    """One reward function and its weight in the total."""

    fn: str = MISSING
    """Import path of a callable ``fn(prompts, completions, **columns) -> list[float | None]``
    (the TRL reward contract). None means "not applicable" for that completion."""
    weight: float = 1.0
    """Weight in the total reward, which is the weighted sum over functions."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments bound to the function (e.g. a pattern or a limit)."""


@dataclass
class RewardConfig:
    functions: Dict[str, Any] = field(default_factory=dict)
    """Named reward functions, each a :class:`RewardFunctionConfig` (checked as one at load); each
    is logged as reward/<name>/mean. Add one from the command line with
    ``+reward.functions.fmt={fn:grpo_lightning.rewards.format.format_reward,weight:0.2}``
    (typed as ``Dict[str, RewardFunctionConfig]``, OmegaConf would refuse that override)."""
    non_finite: str = "error"
    """A reward function returning NaN or inf: ``error`` stops the run naming the function and
    the prompt; ``zero`` scores that completion 0 and logs how many per step as
    reward/<name>/non_finite (for rewards that fail now and then, e.g. a parser on odd output)."""


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that a GRPO run uses."""

    max_steps: int = 100
    """Training steps (one step = one batch of prompts, generated and learned from)."""
    accelerator: str = "auto"
    """cpu, gpu (cuda), mps or auto (Lightning's choice)."""
    devices: Any = "auto"
    """Devices (processes) per node: a count, a list of GPU indices, or auto."""
    strategy: str = "auto"
    """Lightning strategy: ddp, fsdp, deepspeed_stage_3, ... (see README, Multi-process)."""
    num_nodes: int = 1
    """Machines in a multi-node run (SLURM or torchrun, README)."""
    precision: str = "32-true"
    """Lightning precision, e.g. 32-true or bf16-mixed (16-mixed is refused: see validate_config)."""
    val_every_n_steps: int = 50
    """Run validation every this many training steps (and once before the first update)."""
    limit_val_batches: Optional[int] = None
    """Cap on validation batches per validation run; None uses all validation prompts, 0 runs
    no validation at all (not even the final one)."""
    log_every_n_steps: int = 1
    """Send the step metrics to the loggers every this many training steps."""
    enable_progress_bar: bool = True
    """The progress bar on a terminal (console lines otherwise); false shows neither."""
    deterministic: bool = False
    """torch's deterministic algorithms (slower on GPUs; CPU runs are deterministic anyway)."""
    console_log_every_n_steps: int = 10
    """When stdout is not a terminal (CI, SLURM logs) the progress bar is replaced by one line
    every this many training steps; 0 silences it. Needs enable_progress_bar."""
    profiler: Optional[str] = None
    """Lightning profiler: simple, advanced or pytorch (``debug=profile``); None disables it."""


@dataclass
class CheckpointConfig:
    every_n_steps: int = 50
    """Write ``checkpoints/last.ckpt`` every this many training steps (and at the end)."""
    enabled: bool = True
    """False writes no checkpoints and leaves SIGTERM to Lightning (no pre-emption checkpoint)."""


@dataclass
class LoggerConfig:
    """Where metrics go: ``csv`` (metrics.csv in the run directory), ``wandb`` or ``none``."""

    kind: str = "csv"
    """csv, wandb (which also writes metrics.csv) or none; chosen with logger=<kind>."""
    project: str = "grpo-lightning"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None uses the default of the logged-in account."""
    group: Optional[str] = None
    """W&B run group (e.g. one per sweep or experiment). A label of the run under every logger
    (the csv logger records it in hparams.yaml), so experiment overlays may set it; so is
    ``tags``. Every other field of this group but ``kind`` applies to logger=wandb only and is
    refused with another logger."""
    tags: List[str] = field(default_factory=list)
    """W&B run tags; recorded like ``group``."""
    run_name: Optional[str] = None
    """W&B run name; None lets W&B pick one."""
    id: Optional[str] = None
    """W&B run id; set it to resume a run in place."""
    offline: bool = False
    """Write W&B runs locally (``wandb sync`` later); WANDB_MODE=offline does the same."""
    log_completions_every: int = 10
    """W&B only: every this many training steps, log a table of the step's prompts, completions,
    each reward, total reward and advantage, with reward and length histograms; 0 disables it."""


WANDB_ONLY_FIELDS = ("project", "entity", "run_name", "id", "offline", "log_completions_every")


@dataclass
class TrainConfig:
    """The whole run, as composed by ``conf/config.yaml``."""

    # The groups, each selected in conf/ (algorithm=dapo, model=hf, ...) and documented above.
    algorithm: GRPOConfig = field(default_factory=GRPOConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    """Seeds python, numpy and torch (Lightning's seed_everything), the prompt order and the
    validation split; the same seed gives the same run on CPU."""
    output_dir: str = MISSING
    """Run directory (metrics.csv, checkpoints, exports). Hydra sets it to its job directory."""
    ckpt_path: Optional[str] = None
    """Resume from this Lightning checkpoint, or ``last`` for ``<output_dir>/checkpoints/last.ckpt``
    (a fresh start when there is none yet, so one command serves the first launch and requeues).
    The resumed run continues exactly; see grpo_lightning/resume.py."""
    validate_before_training: bool = True
    """Run validation once before the first update, so the learning curve has a baseline."""
    optimized_metric: Optional[str] = None
    """Metric that ``grpo-train`` returns to Hydra, e.g. ``val/reward/mean`` for the Optuna
    sweeper (``hparams_search=optuna``). A name the run never logs is an error."""


def import_object(path: str, field_name: str) -> Any:
    """Resolve ``package.module.attribute``; a ConfigError names ``field_name`` if it does not."""
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{field_name}={path!r} does not resolve ({error}); give an import path "
                          "like package.module.function, importable from the current environment") from None


def asset_path(name: str) -> str:
    """Absolute path of a checkpoint shipped in ``grpo_lightning/assets`` (works installed too)."""
    path = Path(str(resources.files("grpo_lightning") / "assets" / name))
    if not path.is_dir():
        raise ConfigError(f"no shipped asset named {name!r} in {path.parent}")
    return str(path)


def register_configs() -> None:
    """Register the schemas with Hydra and the ``${asset:...}`` resolver (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("asset", asset_path, replace=True)


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys present in ``node`` but not in its dataclass schema (``+key=value`` adds them)."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    unknown = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            unknown.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown += _unknown_keys(child, f"{path}.")
    return unknown


def _reward_function(name: str, spec: Any) -> RewardFunctionConfig:
    """One entry of reward.functions (already resolved), checked as a RewardFunctionConfig."""
    if isinstance(spec, RewardFunctionConfig):
        return spec
    where = f"reward.functions.{name}"
    keys = [f.name for f in dataclasses.fields(RewardFunctionConfig)]
    _require(isinstance(spec, dict), f"{where}={spec!r} must be a mapping with the keys {keys}, e.g. "
             f"+{where}={{fn:my_module.my_reward,weight:0.5}}")
    unknown = sorted(set(spec) - set(keys))
    _require(not unknown, f"unknown config key(s): {', '.join(f'{where}.{key}' for key in unknown)}; "
             f"a reward function takes {keys}")
    _require(isinstance(spec.get("fn"), str), f"{where}.fn must be the import path of the function "
             f"(got {spec.get('fn')!r})")
    weight = spec.get("weight", 1.0)
    _require(isinstance(weight, (int, float)) and not isinstance(weight, bool),
             f"{where}.weight must be a number (got {weight!r})")
    kwargs = spec.get("kwargs") or {}
    _require(isinstance(kwargs, dict), f"{where}.kwargs must be a mapping of keyword arguments (got {kwargs!r})")
    return RewardFunctionConfig(fn=spec["fn"], weight=float(weight), kwargs=kwargs)


def to_train_config(cfg: DictConfig) -> "TrainConfig":
    """The composed config as a TrainConfig, refusing keys the schema does not know."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; see grpo_lightning/config.py "
                          "for the fields of each group (a typo, or a key from another trainer?)")
    try:
        train_config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0] + f" (at {getattr(error, 'full_key', '?')})") from None
    train_config.reward.functions = {name: _reward_function(name, spec)
                                     for name, spec in train_config.reward.functions.items()}
    validate_config(train_config)
    if train_config.model.length_buckets is None:
        sharded = shards_weights_by_name(train_config.trainer.strategy)
        train_config.model.length_buckets = 1 if sharded else DEFAULT_LENGTH_BUCKETS
    return train_config


DEFAULT_LENGTH_BUCKETS = 4


LOGGER_KINDS = ("csv", "wandb", "none")
OVERLONG_PROMPTS = ("drop", "truncate")
PROFILERS = ("simple", "advanced", "pytorch")
DTYPES = ("float32", "bfloat16", "float16")
GENERATION_BACKENDS = ("auto", "loop", "hf", "vllm")
REWARD_NON_FINITE = ("error", "zero")
SHARDING_STRATEGIES = ("fsdp", "deepspeed_stage_3", "model_parallel")
"""Lightning strategy names (prefixes) that shard the weights; "deepspeed" alone is ZeRO-2."""


def shards_weights_by_name(strategy: str) -> bool:
    """Whether trainer.strategy names a strategy with sharded weights, for checks at load time.
    GRPOModule.setup decides from the running strategy (distributed.shards_weights), whatever it
    is called; this one names the fix before anything starts."""
    return strategy.startswith(SHARDING_STRATEGIES)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _set_fields(section: Any, names: Any) -> list[str]:
    """The fields among ``names`` of a config dataclass set to other than their defaults."""
    default = type(section)()
    return [name for name in names if getattr(section, name) != getattr(default, name)]


def _require_finite(cfg: Any, prefix: str = "") -> None:
    """Every float of the config (reward weights included) must be finite: an inf learning rate
    or a NaN weight would only surface steps later, as a non-finite metric."""
    items = (cfg.items() if isinstance(cfg, dict)
             else ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)) if dataclasses.is_dataclass(cfg)
             else enumerate(cfg) if isinstance(cfg, (list, tuple)) else ())
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, float):
            _require(math.isfinite(value), f"{name} must be a finite number (got {value})")
        elif str(key).endswith("kwargs"):
            continue  # arguments of the user's own functions: theirs to check
        elif dataclasses.is_dataclass(value) or isinstance(value, (dict, list, tuple)):
            _require_finite(value, f"{name}.")


def validate_config(cfg: TrainConfig) -> None:
    """Check what types cannot: ranges and divisibility. Raises ConfigError naming the field."""
    from grpo_lightning.advantages import ADV_ESTIMATORS

    alg, gen, data = cfg.algorithm, cfg.generation, cfg.data
    _require(alg.group_size >= 2, f"algorithm.group_size must be >= 2 to form a group baseline "
             f"(got {alg.group_size}); try algorithm.group_size=4")
    _require(alg.clip_range > 0, f"algorithm.clip_range must be > 0 (got {alg.clip_range}); "
             "the usual value is 0.2")
    _require(alg.beta >= 0, f"algorithm.beta must be >= 0 (got {alg.beta}); 0 disables the KL term")
    _require(alg.entropy_coef >= 0, f"algorithm.entropy_coef must be >= 0 (got {alg.entropy_coef})")
    _require(alg.adv_eps >= 0, f"algorithm.adv_eps must be >= 0 (got {alg.adv_eps})")
    _require(alg.num_iterations >= 1, f"algorithm.num_iterations must be >= 1 (got {alg.num_iterations})")
    _require(alg.adv_estimator in ADV_ESTIMATORS, f"algorithm.adv_estimator={alg.adv_estimator!r} "
             f"is unknown; choose one of {sorted(ADV_ESTIMATORS)}")
    _require(alg.max_grad_norm is None or alg.max_grad_norm > 0,
             f"algorithm.max_grad_norm must be > 0 or null (got {alg.max_grad_norm})")
    _validate_variant(alg, gen)
    _require(data.batch_size >= 1, f"data.batch_size must be >= 1 (got {data.batch_size})")
    _require(data.val_batch_size >= 1, f"data.val_batch_size must be >= 1 (got {data.val_batch_size})")
    rollout_size = data.batch_size * alg.group_size
    mini = alg.mini_batch_size or rollout_size
    _require(mini >= 1 and rollout_size % mini == 0,
             f"algorithm.mini_batch_size={alg.mini_batch_size} must divide the completions per step "
             f"(data.batch_size * algorithm.group_size = {rollout_size})")
    micro = alg.micro_batch_size or mini
    _require(micro >= 1 and mini % micro == 0,
             f"algorithm.micro_batch_size={alg.micro_batch_size} must divide the mini-batch ({mini})")
    _require(gen.max_new_tokens >= 1, f"generation.max_new_tokens must be >= 1 (got {gen.max_new_tokens})")
    _require(gen.temperature > 0, f"generation.temperature must be > 0 for sampling (got "
             f"{gen.temperature}); greedy validation is generation.val_do_sample=false")
    _require(0 < gen.top_p <= 1, f"generation.top_p must be in (0, 1] (got {gen.top_p})")
    _require(gen.backend in GENERATION_BACKENDS, f"generation.backend={gen.backend!r} is unknown; choose "
             f"one of {GENERATION_BACKENDS}")
    if gen.backend == "vllm":
        _validate_vllm(cfg)
    else:  # accepted and then ignored, they would mislead
        unused = [f"generation.{name}" for name in _set_fields(gen, ("vllm_gpu_memory_utilization",
                                                                       "vllm_max_model_len"))]
        _require(not unused, f"{', '.join(unused)} only applies with generation.backend=vllm (this run: "
                 f"{gen.backend}); remove it or switch that on")
    _require(gen.top_k >= 0, f"generation.top_k must be >= 0, 0 disables it (got {gen.top_k})")
    _require_finite(cfg)
    _require(cfg.optim.lr > 0, f"optim.lr must be > 0 (got {cfg.optim.lr})")
    _require(len(cfg.optim.betas) == 2, f"optim.betas must have two values (got {list(cfg.optim.betas)})")
    _require(all(0 <= beta < 1 for beta in cfg.optim.betas),
             f"optim.betas must be in [0, 1) (got {list(cfg.optim.betas)}); AdamW's usual values are [0.9, 0.999]")
    _require(cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {cfg.optim.weight_decay})")
    _require(cfg.optim.eps > 0, f"optim.eps must be > 0 (got {cfg.optim.eps})")
    _require(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32) (got {cfg.seed})")
    _require(data.num_workers >= 0, f"data.num_workers must be >= 0 (got {data.num_workers})")
    _require(cfg.trainer.limit_val_batches is None or cfg.trainer.limit_val_batches >= 0,
             f"trainer.limit_val_batches must be >= 0 or null (got {cfg.trainer.limit_val_batches})")
    _require(cfg.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0 (got {cfg.optim.warmup_steps})")
    _require(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} is unknown; choose one of {DTYPES}")
    buckets = cfg.model.length_buckets
    _require(buckets is None or buckets >= 1,
             f"model.length_buckets must be >= 1 or null, 1 scores one padded block (got {buckets})")
    _require(buckets in (None, 1) or not shards_weights_by_name(cfg.trainer.strategy),
             f"model.length_buckets={buckets} with trainer.strategy={cfg.trainer.strategy}: each process "
             "splits its own completions, and the sharded strategies need every process to make the same "
             "forward calls (else they wait on each other forever); set model.length_buckets=1 (or null)")
    _require(cfg.model.logprob_chunk_size is None or cfg.model.logprob_chunk_size >= 1,
             f"model.logprob_chunk_size must be >= 1 or null for automatic (got {cfg.model.logprob_chunk_size})")
    _require(not (cfg.model.share_prompts and cfg.model.gradient_checkpointing),
             "model.share_prompts=true needs the KV cache, which model.gradient_checkpointing=true "
             "switches off in training; set model.share_prompts=null (or false) to score full sequences")
    _validate_lora(cfg.model.lora)
    _validate_data_source(data)
    _validate_validation_sampling(gen, cfg.reward)
    _require(len(cfg.reward.functions) > 0, "reward.functions is empty; add at least one reward "
             "function (see conf/reward/arithmetic.yaml)")
    for name, spec in cfg.reward.functions.items():
        _require(name.isidentifier(), f"reward.functions.{name}: names must be identifiers "
                 "(letters, digits, underscores), they become metric names")
        _require(spec.fn != "" and "." in spec.fn, f"reward.functions.{name}.fn={spec.fn!r} must be "
                 "an import path like package.module.function")
    _require(cfg.trainer.max_steps >= 1, f"trainer.max_steps must be >= 1 (got {cfg.trainer.max_steps})")
    _require(cfg.trainer.val_every_n_steps >= 1,
             f"trainer.val_every_n_steps must be >= 1 (got {cfg.trainer.val_every_n_steps})")
    _require(cfg.trainer.precision not in ("16-mixed", "16", "16-true"),
             f"trainer.precision={cfg.trainer.precision!r}: fp16 needs loss scaling, which the "
             "manual GRPO update does not do; use bf16-mixed or 32-true")
    _require(cfg.checkpoint.every_n_steps >= 1,
             f"checkpoint.every_n_steps must be >= 1 (got {cfg.checkpoint.every_n_steps})")
    _require(alg.max_consecutive_skips >= 0,
             f"algorithm.max_consecutive_skips must be >= 0 (got {alg.max_consecutive_skips})")
    _require(cfg.reward.non_finite in REWARD_NON_FINITE, f"reward.non_finite={cfg.reward.non_finite!r} "
             f"is unknown; choose one of {REWARD_NON_FINITE}")
    _require(cfg.logger.kind in LOGGER_KINDS,
             f"logger.kind={cfg.logger.kind!r} is unknown; choose one of {LOGGER_KINDS}")
    if cfg.logger.kind != "wandb":  # accepted and then ignored, they would mislead
        unused = [f"logger.{name}" for name in _set_fields(cfg.logger, WANDB_ONLY_FIELDS)]
        _require(not unused, f"{', '.join(unused)} only applies with logger=wandb (this run: "
                 f"logger={cfg.logger.kind}); add logger=wandb or remove it")
    _require(cfg.logger.log_completions_every >= 0,
             f"logger.log_completions_every must be >= 0, 0 disables it (got {cfg.logger.log_completions_every})")
    _require(cfg.trainer.console_log_every_n_steps >= 0, "trainer.console_log_every_n_steps must be >= 0, "
             f"0 silences it (got {cfg.trainer.console_log_every_n_steps})")
    _require(cfg.trainer.profiler is None or cfg.trainer.profiler in PROFILERS,
             f"trainer.profiler={cfg.trainer.profiler!r} is unknown; choose one of {PROFILERS} or null")
    _require(data.overfit_rows is None or data.overfit_rows >= data.batch_size,
             f"data.overfit_rows={data.overfit_rows} must be >= data.batch_size ({data.batch_size}) or null")


def _validate_vllm(cfg: TrainConfig) -> None:
    from grpo_lightning.vllm_backend import INSTALL_HINT, vllm_available

    gen, trainer = cfg.generation, cfg.trainer
    _require(vllm_available(), f"generation.backend=vllm needs vLLM, which is not installed: {INSTALL_HINT}; "
             "or sample in process with generation.backend=auto")
    _require(trainer.accelerator not in ("cpu", "mps"), f"generation.backend=vllm runs on CUDA GPUs, not "
             f"trainer.accelerator={trainer.accelerator}; use trainer.accelerator=gpu, or generation.backend=auto")
    _require(not shards_weights_by_name(trainer.strategy),
             f"generation.backend=vllm with trainer.strategy={trainer.strategy}: the weights are sharded and "
             "syncing them into vLLM would need a full gather, which is not implemented; use "
             "trainer.strategy=ddp (or auto), or generation.backend=auto")
    _require(0 < gen.vllm_gpu_memory_utilization < 1, "generation.vllm_gpu_memory_utilization must be in "
             f"(0, 1) (got {gen.vllm_gpu_memory_utilization}); training needs the rest of the GPU")
    longest_prompt = cfg.data.max_prompt_length or 1
    _require(gen.vllm_max_model_len is None or gen.vllm_max_model_len >= longest_prompt + gen.max_new_tokens,
             f"generation.vllm_max_model_len={gen.vllm_max_model_len} leaves no room for a prompt of "
             f"data.max_prompt_length={cfg.data.max_prompt_length} tokens and generation.max_new_tokens="
             f"{gen.max_new_tokens} new ones; raise it to their sum, or set it to null")


def _validate_lora(lora: LoRAConfig) -> None:
    _require(lora.r >= 0, f"model.lora.r must be >= 0, 0 disables LoRA (got {lora.r})")
    _require(lora.alpha > 0, f"model.lora.alpha must be > 0 (got {lora.alpha})")
    _require(0 <= lora.dropout < 1, f"model.lora.dropout must be in [0, 1) (got {lora.dropout})")
    _require(lora.target_modules is None or len(lora.target_modules) > 0,
             "model.lora.target_modules is empty; list module names or use null for all linear layers")
    unused = _set_fields(lora, [f.name for f in dataclasses.fields(LoRAConfig)]) if lora.r == 0 else []
    if unused:
        raise ConfigError(f"model.lora.{unused[0]} is set but model.lora.r=0 (full fine-tuning); set "
                          "model.lora.r > 0 to train LoRA adapters")


def _validate_data_source(data: DataConfig) -> None:
    _require((data.builder is None) != (data.path is None),
             "set exactly one of data.builder and data.path (e.g. data=jsonl data.path=prompts.jsonl, "
             f"or data=arithmetic); got builder={data.builder!r}, path={data.path!r}")
    _require(0 < data.val_fraction < 1, f"data.val_fraction must be in (0, 1) (got {data.val_fraction})")
    _require(data.max_val_prompts is None or data.max_val_prompts >= 1,
             f"data.max_val_prompts must be >= 1 or null (got {data.max_val_prompts})")
    _require(data.max_prompt_length is None or data.max_prompt_length >= 1,
             f"data.max_prompt_length must be >= 1 or null (got {data.max_prompt_length})")
    _require(data.overlong_prompts in OVERLONG_PROMPTS, f"data.overlong_prompts={data.overlong_prompts!r} "
             f"is unknown; choose one of {OVERLONG_PROMPTS}")
    _require(data.val_split is None or data.val_path is None,
             "set at most one of data.val_split and data.val_path")
    path_only = _set_fields(data, ("config_name", "split", "val_split", "val_path", "val_fraction", "answer_key"))
    if data.builder is not None and path_only:
        raise ConfigError(f"data.{path_only[0]} applies to data.path only; with data.builder={data.builder!r} "
                          "the builder chooses the rows")


def _validate_validation_sampling(gen: GenerationConfig, reward: RewardConfig) -> None:
    _require(gen.val_num_samples >= 1, f"generation.val_num_samples must be >= 1 (got {gen.val_num_samples})")
    _require(gen.val_num_samples == 1 or gen.val_do_sample,
             f"generation.val_num_samples={gen.val_num_samples} with greedy validation would repeat one "
             "completion; set generation.val_do_sample=true")
    _require(gen.val_pass_reward is None or gen.val_pass_reward in reward.functions,
             f"generation.val_pass_reward={gen.val_pass_reward!r} is not among reward.functions "
             f"({sorted(reward.functions)})")


def _validate_variant(alg: GRPOConfig, gen: GenerationConfig) -> None:
    """The GRPO-family options: names exist, ranges hold, and none is set where it has no effect."""
    from grpo_lightning.advantages import SCALE_REWARDS, SELF_SCALED
    from grpo_lightning.kl import KL_ESTIMATORS
    from grpo_lightning.losses import LOSS_AGGREGATIONS, POLICY_LOSSES

    _require(alg.policy_loss in POLICY_LOSSES, f"algorithm.policy_loss={alg.policy_loss!r} is unknown; "
             f"choose one of {sorted(POLICY_LOSSES)}")
    _require(alg.loss_agg in LOSS_AGGREGATIONS, f"algorithm.loss_agg={alg.loss_agg!r} is unknown; "
             f"choose one of {sorted(LOSS_AGGREGATIONS)}")
    _require(alg.kl_estimator in KL_ESTIMATORS, f"algorithm.kl_estimator={alg.kl_estimator!r} is unknown; "
             f"choose one of {sorted(KL_ESTIMATORS)}")
    _require(alg.scale_rewards is None or alg.scale_rewards in SCALE_REWARDS,
             f"algorithm.scale_rewards={alg.scale_rewards!r} is unknown; choose one of {list(SCALE_REWARDS)} or null")
    if alg.adv_estimator in SELF_SCALED:
        _require(alg.scale_rewards is None, f"algorithm.scale_rewards={alg.scale_rewards!r} has no effect with "
                 f"algorithm.adv_estimator={alg.adv_estimator}, which fixes its own scale; set "
                 "algorithm.scale_rewards=null or use adv_estimator=grpo_vectorized")
        _require(alg.normalize_by_std or alg.adv_estimator != "reinforce_pp",
                 "algorithm.normalize_by_std=false has no effect with adv_estimator=reinforce_pp, which "
                 "always whitens over the batch; use adv_estimator=dr_grpo for unscaled advantages")
    else:
        _require(alg.scale_rewards != "group" or alg.normalize_by_std,
                 "algorithm.scale_rewards=group contradicts algorithm.normalize_by_std=false; set one of them")
    for name in ("clip_range_low", "clip_range_high"):
        value = getattr(alg, name)
        _require(value is None or value > 0, f"algorithm.{name} must be > 0 or null (got {value})")
    low = alg.clip_range if alg.clip_range_low is None else alg.clip_range_low
    _require(alg.policy_loss == "cispo" or low < 1, f"algorithm.clip_range_low must be < 1 (got {low}) "
             "so that 1 - clip_range_low stays a positive ratio")
    if alg.clip_ratio_c is not None:
        _require(alg.policy_loss == "clip", f"algorithm.clip_ratio_c (dual-clip) only applies to "
                 f"policy_loss=clip, not {alg.policy_loss!r}; set algorithm.clip_ratio_c=null")
        _require(alg.clip_ratio_c > 1, f"algorithm.clip_ratio_c must be > 1 (got {alg.clip_ratio_c}); "
                 "the dual-clip paper uses 3")
    _require(0 < alg.gamma <= 1, f"algorithm.gamma must be in (0, 1] (got {alg.gamma})")
    _require(alg.beta == 0 or alg.kl_in_reward or alg.kl_estimator != "k1",
             "algorithm.kl_estimator=k1 in the loss regularizes nothing: its gradient, grad log pi, has expectation "
             "0 under the sampling policy. Use k3 (or k2) in the loss, or algorithm.kl_in_reward=true, where k1 is "
             "the usual choice (RLOO)")
    _require(alg.beta > 0 or alg.kl_estimator == "k3",
             f"algorithm.kl_estimator={alg.kl_estimator} has no effect with algorithm.beta=0 (no KL term); "
             "set algorithm.beta > 0 or leave kl_estimator=k3")
    _require(alg.beta > 0 or not alg.kl_in_reward,
             "algorithm.kl_in_reward=true has no effect with algorithm.beta=0; set algorithm.beta > 0")
    _require(alg.filter_zero_std_groups or alg.max_generation_rounds is None,
             "algorithm.max_generation_rounds only applies with algorithm.filter_zero_std_groups=true; "
             "enable it or set max_generation_rounds=null")
    _require(alg.max_generation_rounds is None or alg.max_generation_rounds >= 1,
             f"algorithm.max_generation_rounds must be >= 1 (got {alg.max_generation_rounds})")
    if alg.overlong_buffer_frac is None:
        _require(alg.overlong_penalty_factor == 1.0, "algorithm.overlong_penalty_factor has no effect "
                 "without algorithm.overlong_buffer_frac; set it (DAPO uses 0.2)")
    else:
        _require(0 < alg.overlong_buffer_frac <= 1,
                 f"algorithm.overlong_buffer_frac must be in (0, 1] (got {alg.overlong_buffer_frac})")
        _require(alg.overlong_penalty_factor >= 0,
                 f"algorithm.overlong_penalty_factor must be >= 0 (got {alg.overlong_penalty_factor})")
