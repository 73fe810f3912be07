"""The Hugging Face implementation of the policy contract (policy/base.py).

:class:`CausalLMPolicy` implements it for any ``AutoModelForCausalLM`` with its tokenizer,
optionally with LoRA adapters (peft): then only the adapters train and the reference policy is
the same model with its adapters disabled, so the base weights exist once.
"""

from __future__ import annotations

import copy
import importlib.util
import struct
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import Tensor, nn

from grpo_lightning.compat import gguf_dequantized
from grpo_lightning.config import DEFAULT_LENGTH_BUCKETS, ConfigError, LoRAConfig, ModelConfig
from grpo_lightning.policy.base import Policy, SamplingParams
from grpo_lightning.policy.generation.loop import sample_with_kv_cache, supports_generation_loop
from grpo_lightning.policy.generation.vllm import VLLMSampler, vllm_sampling_params
from grpo_lightning.policy.scoring.buckets import could_pay, length_buckets, scatter_rows, trim_padding
from grpo_lightning.policy.scoring.logprobs import (
    blocks_logprobs_from_hidden,
    completion_logprobs,
    completions_per_chunk,
    distinct_prompts,
    supports_hidden_head,
)

if TYPE_CHECKING:
    from grpo_lightning.types import TokenBatch


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def _check_local_model_dir(name: str) -> None:
    """What ``from_pretrained`` needs in a local directory, checked before it is asked, so that each
    missing part is named rather than reported as another library's error."""
    directory = Path(name).expanduser()
    if not (directory / "config.json").is_file():
        ggufs = _gguf_files(directory)
        hint = f"; it holds {', '.join(ggufs)}: name one with model.gguf_file" if ggufs else ""
        raise ConfigError(
            f"model.name_or_path={name!r}: no config.json there; point it at a "
            f"directory written by save_pretrained, or at a hub id{hint}"
        )
    if not any(any(directory.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ConfigError(
            f"model.name_or_path={name!r} holds config.json but no weights (*.safetensors or "
            "pytorch_model*.bin); save the model there with model.save_pretrained"
        )
    if not any((directory / file).is_file() for file in TOKENIZER_FILES):
        raise ConfigError(
            f"model.name_or_path={name!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
            "save the tokenizer there too with tokenizer.save_pretrained"
        )


def _gguf_files(directory: Path) -> list[str]:
    """The GGUF files in ``directory`` (none if it is not one), to name in an error."""
    return sorted(path.name for path in directory.glob("*.gguf")) if directory.is_dir() else []


def _gguf_load_options(name_or_path: str, gguf_file: str) -> dict:
    """``from_pretrained`` options that load ``gguf_file`` dequantized to plain float weights, after
    checking what can be checked before the load: the ``gguf`` package and, in a local directory,
    the file itself."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"model.gguf_file={gguf_file!r} needs the gguf package, which is not installed; "
            "pip install 'grpo-lightning[gguf]' (or pip install gguf)"
        )
    if _looks_local(name_or_path):
        directory = Path(name_or_path).expanduser()
        if not (directory / gguf_file).is_file():
            present = _gguf_files(directory)
            raise ConfigError(
                f"model.gguf_file={gguf_file!r}: no such file in model.name_or_path={name_or_path!r}"
                + (f"; it holds {', '.join(present)}" if present else "")
            )
    return {"gguf_file": gguf_file, **gguf_dequantized()}


class CausalLMPolicy(Policy):
    """A Hugging Face causal LM and its tokenizer as a GRPO policy."""

    dequantized_from_gguf = False
    """Loaded from a GGUF file: the directory it came from is no checkpoint that vLLM can read."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        logprob_chunk_size: Optional[int] = None,
        save_merged: bool = True,
        chunked_lm_head: bool = True,
        share_prompts: bool = False,
        length_buckets: int = 1,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.logprob_chunk_size = logprob_chunk_size  # None: completions_per_chunk
        # The longest completion this policy will score (GRPOModule sets generation.max_new_tokens):
        # an automatic chunk size sized for it is the same for every batch and every process, as
        # sharded weights need (the same head calls everywhere). None: each batch's own length.
        self.max_completion_tokens: Optional[int] = None
        self.save_merged = save_merged  # LoRA export: merged weights, or the adapters alone
        # False for chat-templated prompts: the template already wrote BOS and the like.
        self.add_special_tokens = True
        self.chunked_lm_head = chunked_lm_head
        self.share_prompts = share_prompts  # score each distinct prompt once (see logprobs.py)
        self.length_buckets = length_buckets  # at most this many trimmed blocks per pass (buckets.py)
        self.reference_model: Optional[nn.Module] = None
        self.reference_is_base = False  # LoRA: the reference is self.model with adapters disabled
        self._vllm: Optional[VLLMSampler] = None  # generation.backend=vllm, built at the first sample
        self._vllm_stale = True  # vLLM's copy of the weights predates the last optimizer step
        if tokenizer.pad_token_id is None:
            # Batched generation needs a pad id; EOS is the usual stand-in (masks use first EOS).
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_token_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        if self.eos_token_ids == [None]:
            raise ConfigError(
                "the model has no EOS token id (model.generation_config.eos_token_id "
                "and tokenizer.eos_token_id are both unset); completions could never end"
            )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "CausalLMPolicy":
        """Load ``cfg.name_or_path`` (hub id or local directory) with ``from_pretrained``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = cfg.name_or_path
        kwargs = dict(dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
        if cfg.attn_implementation is not None:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if cfg.gguf_file is not None:
            kwargs.update(_gguf_load_options(name, cfg.gguf_file))
        elif _looks_local(name):
            _check_local_model_dir(name)
        tokenizer_kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file is not None else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **tokenizer_kwargs)
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except OSError as error:
            raise ConfigError(
                f"model.name_or_path={name!r} could not be loaded: {error}. Give a "
                "local directory written by save_pretrained, or a hub id that is "
                "cached or reachable"
            ) from None
        except Exception as error:
            if type(error).__module__.startswith("safetensors"):  # a truncated or corrupt weights file
                raise ConfigError(
                    f"model.name_or_path={name!r}: its weights could not be read ({type(error).__name__}: "
                    f"{error}); the file may be truncated or corrupt: write it again with save_pretrained"
                ) from None
            if cfg.gguf_file is None or not isinstance(error, (ValueError, struct.error, KeyError, IndexError)):
                raise
            # The gguf reader's own errors for a truncated, corrupt or unsupported file.
            raise ConfigError(
                f"model.gguf_file={cfg.gguf_file!r} in {name!r} could not be read as a GGUF model "
                f"({type(error).__name__}: {error}); the file may be truncated or corrupt (fetch or "
                "reinstall it), or hold an architecture transformers cannot load from GGUF"
            ) from None
        if cfg.disable_dropout:
            disable_dropout(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.r > 0:
            model = add_lora(model, cfg.lora)
        if cfg.compile:
            model.get_decoder().compile(dynamic=True)  # lazy: compiles at the first call
        share_prompts = cfg.share_prompts if cfg.share_prompts is not None else not cfg.gradient_checkpointing
        policy = cls(
            model,
            tokenizer,
            logprob_chunk_size=cfg.logprob_chunk_size,
            save_merged=cfg.lora.save_merged,
            chunked_lm_head=cfg.chunked_lm_head,
            share_prompts=share_prompts,
            length_buckets=cfg.length_buckets if cfg.length_buckets is not None else DEFAULT_LENGTH_BUCKETS,
        )
        policy.dequantized_from_gguf = cfg.gguf_file is not None
        return policy

    @property
    def is_lora(self) -> bool:
        # Without peft imported no model can be a PeftModel; importing it just to ask would cost
        # its resident memory in every run without LoRA.
        peft = sys.modules.get("peft")
        return peft is not None and isinstance(self.model, peft.PeftModel)

    def encode_prompts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens)
        device = next(self.model.parameters()).device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    @torch.no_grad()
    def sample_with_logprobs(
        self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The lean loop keeps the log-probs it drew from (``sampling.record_logprobs``); generate and
        vLLM give none here."""
        backend = sampling.backend
        if backend == "auto":
            backend = "loop" if supports_generation_loop(self.model) else "hf"
        if not sampling.record_logprobs or backend != "loop":
            return self.sample(prompt_ids, prompt_mask, sampling), None
        kept: list[Tensor] = []
        ids = self._sample_with_loop(prompt_ids, prompt_mask, sampling, kept)
        return ids, kept[0]

    def _sample_with_loop(
        self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams, logprobs_out: Optional[list] = None
    ) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return sample_with_kv_cache(
                self.model,
                prompt_ids,
                prompt_mask,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                do_sample=sampling.do_sample,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                lockstep=self.lockstep,
                logprobs_out=logprobs_out,
                generator=None
                if sampling.seed is None
                else torch.Generator(device=prompt_ids.device).manual_seed(sampling.seed),
            )
        finally:
            self.model.train(was_training)

    def sample(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams) -> Tensor:
        from transformers import GenerationConfig

        backend = sampling.backend
        if backend == "auto":
            backend = "loop" if supports_generation_loop(self.model) else "hf"
        if backend == "vllm":
            return self._sample_with_vllm(prompt_ids, prompt_mask, sampling)
        if backend == "loop":
            return self._sample_with_loop(prompt_ids, prompt_mask, sampling)
        was_training = self.model.training
        self.model.eval()
        # A full GenerationConfig, so no default hidden in the checkpoint (e.g. top_k=50) applies.
        generation = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature if sampling.do_sample else None,
            top_p=sampling.top_p if sampling.do_sample else None,
            top_k=sampling.top_k if sampling.do_sample else None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )
        try:
            # synced_gpus: generate's own lockstep (forward calls until every process is done);
            # None leaves generate's detection of FSDP / ZeRO-3 in place.
            sequences = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation,
                synced_gpus=True if self.lockstep is not None else None,
            )
        finally:
            self.model.train(was_training)
        return sequences[:, prompt_ids.size(1) :]  # [B, T]

    def _sample_with_vllm(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingParams) -> Tensor:
        if self._vllm is None:
            self._vllm = VLLMSampler(
                self._weights_path(),
                dtype=next(self.model.parameters()).dtype,
                engine=sampling.vllm_engine,
                seed=_process_seed(),
            )
        if self._vllm_stale:
            self._vllm.load_weights(self._named_weights_for_sampler())
            self._vllm_stale = False
        kwargs = vllm_sampling_params(
            sampling.max_new_tokens,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            eos_token_ids=self.eos_token_ids,
        )
        return self._vllm.sample(prompt_ids, prompt_mask, kwargs, self.eos_token_ids, self.tokenizer.pad_token_id)

    def weights_updated(self) -> None:
        self._vllm_stale = True

    def _weights_path(self) -> str:
        """Where vLLM reads the architecture (and first weights) from: the checkpoint the model
        came from, or, for a model built in memory or dequantized from GGUF, a copy saved to a
        temporary directory."""
        base = self.model.get_base_model() if self.is_lora else self.model
        path = getattr(base, "name_or_path", "") or ""
        if (
            path
            and not self.dequantized_from_gguf
            and (not _looks_local(path) or (Path(path).expanduser() / "config.json").is_file())
        ):
            return path
        directory = tempfile.mkdtemp(prefix="grpo-vllm-")
        base.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    @torch.no_grad()
    def _named_weights_for_sampler(self) -> list[tuple[str, Tensor]]:
        """The weights under their Hugging Face names; with LoRA, base + adapter delta.

        The delta is added out of place: with LoRA the base weights are also the frozen
        reference, and merging into them and back would accumulate rounding error there."""
        if not self.is_lora:
            return [(name, param.detach()) for name, param in self.model.named_parameters()]
        from peft.tuners.lora import LoraLayer

        merged = {}
        for module_name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                delta = sum(
                    module.get_delta_weight(adapter) for adapter in module.active_adapters if adapter in module.lora_A
                )
                merged[f"{module_name}.base_layer.weight"] = module.get_base_layer().weight + delta
        return [
            (_base_weight_name(name), merged.get(name, param).detach())
            for name, param in self.model.named_parameters()
            if "lora_" not in name
        ]

    def decode(self, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids.cpu(), completion_mask.cpu())]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def logprobs_and_entropy(
        self,
        batch: "TokenBatch",
        *,
        temperature: float,
        with_entropy: bool,
        reference: bool = False,
        entropy_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        config = self.model.config.get_text_config()  # multimodal configs keep the vocabulary there
        chunk_size = self.logprob_chunk_size or completions_per_chunk(
            self.max_completion_tokens or batch.completion_ids.size(1),
            config.vocab_size,
            batch.completion_ids.device,
            getattr(config, "hidden_size", 0),
        )

        def score_blocks(model: nn.Module, blocks: list[tuple[Tensor, ...]]) -> list[tuple[Tensor, Optional[Tensor]]]:
            options = dict(
                temperature=temperature,
                with_entropy=with_entropy,
                chunk_size=chunk_size,
                entropy_grad=entropy_grad,
                share_prompts=self.share_prompts,
                same_calls=self.lockstep is not None,
            )
            if self.chunked_lm_head and supports_hidden_head(model):
                return blocks_logprobs_from_hidden(model, blocks, **options)  # one head call for all
            return [completion_logprobs(model, *block, **options) for block in blocks]

        def score(model: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
            # The model attends to every token in the sequence, tool results included; the loss
            # applies completion_mask to the log-probs afterwards.
            tensors = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_present)
            buckets = self._length_buckets(batch)
            if buckets is None:
                return score_blocks(model, [tensors])[0]
            blocks = [trim_padding(*(t[rows] for t in tensors)) for rows in buckets]
            scored = list(zip(buckets, score_blocks(model, blocks)))
            num_rows, num_completion = batch.completion_ids.shape
            logprobs = scatter_rows([(rows, lp) for rows, (lp, _) in scored], num_rows, num_completion)
            entropy = (
                scatter_rows([(rows, ent) for rows, (_, ent) in scored], num_rows, num_completion)
                if with_entropy
                else None
            )
            return logprobs, entropy  # [B, T] each

        if not reference:
            return score(self.model)
        if self.reference_is_base:
            with torch.no_grad(), self.model.disable_adapter():
                return score(self.model)
        if self.reference_model is None:
            raise RuntimeError("no reference policy: call enable_reference() first (beta > 0)")
        return score(self.reference_model)

    def _length_buckets(self, batch: "TokenBatch") -> Optional[list[Tensor]]:
        if self.lockstep is not None:
            return None  # the number of buckets depends on the data, the calls must not
        if not could_pay(*batch.prompt_ids.shape, batch.completion_ids.size(1), self.length_buckets):
            return None  # too small to split: skip the distinct-prompt search too
        shared = distinct_prompts(batch.prompt_ids, batch.prompt_mask) if self.share_prompts else None
        return length_buckets(
            batch.prompt_mask,
            batch.completion_present,
            self.length_buckets,
            prompt_of_row=shared[2] if shared is not None else None,
        )

    def enable_reference(self) -> None:
        """Freeze the current policy as the KL reference: a frozen copy of the model, or with
        LoRA the base model itself (adapters disabled while scoring), which costs no memory."""
        if self.is_lora:
            self.reference_is_base = True
            return
        reference = copy.deepcopy(self.model).eval()
        reference.requires_grad_(False)
        self.reference_model = reference

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def reference_pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The frozen copy's weights with the model's (both list tied weights once, in one order).
        With LoRA the reference is the base model itself, which a refresh would have to change."""
        if self.reference_model is None:
            raise RuntimeError(
                "no reference copy to refresh: with LoRA the reference is the base model itself; "
                "without, enable_reference() makes one (algorithm.beta > 0 does)"
            )
        return zip(self.reference_model.parameters(), self.model.parameters())

    def train(self, mode: bool = True) -> "CausalLMPolicy":
        # Lightning switches every submodule to train mode; the reference must stay frozen.
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the policy in Hugging Face format, loadable by ``from_pretrained``.

        With LoRA and ``save_merged`` the adapters are folded into the weights first, in place:
        the policy then holds the merged model and has no adapters (call it when training is
        done). Without ``save_merged`` only the adapters are written (``adapter_config.json``
        names the base model), loadable by peft's ``AutoPeftModelForCausalLM.from_pretrained``.
        """
        if self.is_lora and self.save_merged:
            self.model = self.model.merge_and_unload()
            self.reference_is_base = False
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout of ``model``: its nn.Dropout modules and the attention dropout
    probability that transformers' attention modules keep as an attribute (``attention_dropout``)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _base_weight_name(peft_name: str) -> str:
    """A peft parameter name as the base model's checkpoint spells it."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _process_seed() -> int:
    """The run's seed (seed_everything set torch's), offset by the rank so ranks draw differently."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.initial_seed() + (torch.distributed.get_rank() if distributed else 0)) % 2**31


def add_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """``model`` wrapped with trainable LoRA adapters; its own weights are frozen."""
    from peft import LoraConfig, get_peft_model

    target = cfg.target_modules if cfg.target_modules is not None else "all-linear"
    config = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target, task_type="CAUSAL_LM"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(f"model.lora.target_modules={cfg.target_modules}: {error}") from None
