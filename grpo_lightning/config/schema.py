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

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


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
    """Name in the advantage-estimator registry (``grpo_lightning.algo.advantages``)."""
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
    """Name in the policy-loss registry (``grpo_lightning.algo.losses``): ``clip`` [PPO], ``gspo``
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


DEFAULT_LENGTH_BUCKETS = 4
