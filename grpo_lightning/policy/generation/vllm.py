"""Colocated vLLM sampling: ``generation.backend=vllm``.

vLLM (Kwon et al. 2023, arXiv:2309.06180, PagedAttention) runs inside the training process, on
the same GPU, with its own copy of the weights and a KV cache in
``generation.vllm_gpu_memory_utilization`` of the GPU's memory. The policy marks that copy
stale after every optimizer step; the next sampling call (training or validation) first loads
the current weights into vLLM's model (``load_weights``, as TRL's colocate mode does) and
clears vLLM's prefix cache, whose keys/values came from the old weights. So, as with the other
backends, every rollout is drawn from the policy as it is at that moment.

    pip install vllm        # a CUDA machine
    grpo-train model=hf model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct model.dtype=bfloat16 \\
        trainer.accelerator=gpu trainer.precision=bf16-mixed generation.backend=vllm

What differs from the in-process backends (``loop``, ``hf``):

* vLLM's kernels compute slightly different log-probs than the training forward. The loss
  never uses vLLM's: the old log-probs are the training forward's (detached, or recomputed
  before the first update when ``num_iterations`` or mini-batches need them), so the PPO ratio
  compares like with like. Unlike TRL we do not apply a truncated-importance-sampling correction
  for the sampler/trainer mismatch.
* Draws come from vLLM's generator, seeded with the run's seed (plus the process rank), so a
  seed gives other completions than under ``loop``/``hf``.
* With LoRA, vLLM gets merged weights: base + adapter delta, computed out of place at each
  sync (the base weights are the KL reference and are never written).
* FSDP and DeepSpeed ZeRO-3 shard the weights; syncing them would need a full gather, which is not
  implemented: ``validate_config`` refuses them with this backend, as it refuses a CPU run.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class VLLMEngineArgs:
    """The engine settings of ``generation.vllm_*`` (documented in config.GenerationConfig)."""

    gpu_memory_utilization: float = 0.3
    max_model_len: Optional[int] = None


def vllm_sampling_params(
    max_new_tokens: int, *, do_sample: bool, temperature: float, top_p: float, top_k: int, eos_token_ids: list[int]
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for our sampling settings.

    Greedy is temperature 0 in vLLM; a disabled top-k is -1 there (0 here); generation stops at
    any of the policy's EOS ids, and vLLM does not detokenize (the policy decodes itself).
    """
    return dict(
        n=1,
        temperature=temperature if do_sample else 0.0,
        top_p=top_p if do_sample else 1.0,
        top_k=top_k if do_sample and top_k > 0 else -1,
        max_tokens=max_new_tokens,
        stop_token_ids=list(eos_token_ids),
        detokenize=False,
    )


def completion_ids_from_outputs(
    outputs: Iterable[Any], eos_token_ids: list[int], pad_token_id: int, device: torch.device
) -> Tensor:
    """Completion ids [B, T] from vLLM's ``RequestOutput`` list, padded with ``pad_token_id``.

    A completion that vLLM stopped at an EOS keeps it (the completion mask ends there); should a
    vLLM version leave the stop token out of ``token_ids``, it is put back, so the row does not
    read as truncated.
    """
    rows = []
    for output in outputs:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        if completion.finish_reason == "stop" and (not ids or ids[-1] not in eos_token_ids):
            ids.append(eos_token_ids[0])
        rows.append(ids)
    width = max(1, max(len(ids) for ids in rows))
    completion_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # [B, T]
    for row, ids in enumerate(rows):
        completion_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return completion_ids.to(device)


def _engine_model(llm: Any) -> Any:
    """The ``nn.Module`` inside an in-process vLLM engine (its place moved between versions)."""
    worker = llm.llm_engine.model_executor.driver_worker
    for candidate in (worker, getattr(worker, "worker", None)):
        runner = getattr(candidate, "model_runner", None)
        if runner is not None and hasattr(runner, "model"):
            return runner.model
    import vllm

    raise RuntimeError(
        f"vLLM {getattr(vllm, '__version__', '?')}: found no model_runner.model on the "
        "engine's driver worker, so the weights cannot be synced; use the vLLM versions "
        "TRL's colocate mode supports, or generation.backend=auto"
    )


def _distributed_env() -> None:
    """What vLLM's ``external_launcher`` reads: this process's rank, and a rendezvous address."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device() if torch.cuda.is_available() else 0))
    os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size() if distributed else 1))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


class VLLMSampler:
    """A colocated ``vllm.LLM`` that samples completions for token-id prompts."""

    def __init__(self, model_path: str, *, dtype: torch.dtype, engine: VLLMEngineArgs, seed: int):
        from vllm import LLM

        _distributed_env()
        self.llm = LLM(
            model=model_path,
            dtype=str(dtype).removeprefix("torch."),
            gpu_memory_utilization=engine.gpu_memory_utilization,
            max_model_len=engine.max_model_len,
            seed=seed,
            skip_tokenizer_init=True,
            enable_prefix_caching=True,
            # In this process (the weights are loaded into it directly), one engine per rank.
            distributed_executor_backend="external_launcher",
        )

    def load_weights(self, named_tensors: list[tuple[str, Tensor]]) -> None:
        """Copy the policy's current weights (Hugging Face names) into the engine."""
        _engine_model(self.llm).load_weights(named_tensors)
        self.llm.reset_prefix_cache()  # cached prompt keys/values came from the old weights

    def sample(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        sampling_kwargs: dict[str, Any],
        eos_token_ids: list[int],
        pad_token_id: int,
    ) -> Tensor:
        """Completion ids [B, T] for left-padded prompts [B, P]."""
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())
        ]
        outputs = self.llm.generate(prompts, sampling_params=SamplingParams(**sampling_kwargs), use_tqdm=False)
        return completion_ids_from_outputs(outputs, eos_token_ids, pad_token_id, prompt_ids.device)
