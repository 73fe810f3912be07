"""Lockstep (sharded weights): the same forward calls on every process, whatever the data.

Each process's side is checked here, with a stand-in for the all-processes vote; two real
processes voting are in tests/run/test_cross_process.py.
"""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

import grpo_lightning.policy.scoring.buckets as buckets_module
from grpo_lightning.config import ConfigError, GenerationConfig
from grpo_lightning.module import GRPOModule
from grpo_lightning.policy.base import SamplingParams
from grpo_lightning.policy.generation.loop import sample_with_kv_cache
from grpo_lightning.policy.scoring.logprobs import completion_logprobs_from_hidden
from grpo_lightning.rewards import WeightedReward
from grpo_lightning.types import TokenBatch


def _count_calls(model):
    calls = []
    model.get_input_embeddings().register_forward_pre_hook(lambda _, args: calls.append(tuple(args[0].shape)))
    return calls


def test_decoding_goes_on_until_every_process_is_done(arith_policy, votes):
    policy = arith_policy
    model = policy.model.eval()
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6="])
    every_token = list(range(len(policy.tokenizer)))  # every row ends at its first token
    pad = policy.tokenizer.pad_token_id
    calls = _count_calls(model)
    alone = sample_with_kv_cache(
        model, prompt_ids, prompt_mask, max_new_tokens=6, eos_token_ids=every_token, pad_token_id=pad
    )
    assert alone.shape == (2, 1) and len(calls) == 1
    calls.clear()
    vote = votes([False, False, True])  # another process needs two more tokens
    waiting = sample_with_kv_cache(
        model, prompt_ids, prompt_mask, max_new_tokens=6, eos_token_ids=every_token, pad_token_id=pad, lockstep=vote
    )
    assert len(calls) == 3 and vote.asked == [True, True, True]
    assert waiting.shape == (2, 3) and (waiting[:, 1:] == pad).all()
    calls.clear()
    never = sample_with_kv_cache(
        model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=4,
        eos_token_ids=every_token,
        pad_token_id=pad,
        lockstep=votes([False] * 10),
    )
    assert never.shape == (2, 4) and len(calls) == 4  # max_new_tokens still bounds it, without a vote


def test_scoring_makes_the_shared_prompt_calls_even_when_no_prompt_repeats(arith_policy):
    model = arith_policy.model
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["12+34=", "5+6=", "7+8="])  # all distinct
    torch.manual_seed(0)
    completion_ids = torch.randint(3, 14, (3, 4))
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    calls = _count_calls(model)
    results = {}
    for same_calls in (False, True):
        calls.clear()
        results[same_calls] = completion_logprobs_from_hidden(
            model,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            with_entropy=True,
            share_prompts=True,
            same_calls=same_calls,
        )
        assert len(calls) == (2 if same_calls else 1)
    for alone, together in zip(results[False], results[True]):
        torch.testing.assert_close(together * completion_mask, alone * completion_mask, rtol=1e-5, atol=1e-5)


def test_lockstep_scores_one_block(arith_policy, monkeypatch, votes):
    monkeypatch.setattr(buckets_module, "CALL_COST_TOKENS", 0)
    policy = arith_policy
    prompt_ids, prompt_mask = policy.encode_prompts(["12+34=", "5+6=", "90+9=", "1+1="])
    lengths = torch.tensor([1, 12, 1, 1])
    completion_mask = (torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)).long()
    batch = TokenBatch(prompt_ids, prompt_mask, completion_mask * 5, completion_mask)
    assert policy._length_buckets(batch) is not None
    policy.lockstep = votes([])
    assert policy._length_buckets(batch) is None


def _module_on(strategy, world_size: int, arith_policy, backend: str = "auto") -> GRPOModule:
    module = GRPOModule(
        arith_policy,
        WeightedReward({"one": (lambda p, c, **_: [1.0] * len(c), 1.0)}),
        generation=GenerationConfig(backend=backend),
    )
    module._trainer = SimpleNamespace(strategy=strategy, world_size=world_size)
    return module


class VotingFSDP(FSDPStrategy):
    """FSDP whose cross-process vote is recorded; the other process always agrees."""

    def __init__(self):
        super().__init__()
        self.votes = []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.votes.append((decision, all))
        return decision


def test_setup_turns_lockstep_on_for_sharded_weights_only(arith_policy):
    strategy = VotingFSDP()
    module = _module_on(strategy, 2, arith_policy)
    module.setup("fit")
    assert arith_policy.lockstep(False) is False and arith_policy.lockstep(True) is True
    assert strategy.votes == [(False, True), (True, True)]  # "all processes", not "any"
    module.teardown("fit")
    assert arith_policy.lockstep is None  # sampling after fit votes no more
    _module_on(FSDPStrategy(), 1, arith_policy).setup("fit")  # one process: nothing to agree on
    assert arith_policy.lockstep is None
    _module_on(DDPStrategy(), 2, arith_policy).setup("fit")  # DDP: forward calls are not collective
    assert arith_policy.lockstep is None
    _module_on(_deepspeed(stage=2), 2, arith_policy).setup("fit")  # ZeRO-2 keeps whole weights
    assert arith_policy.lockstep is None
    _module_on(_deepspeed(stage=3), 2, arith_policy).setup("fit")
    assert arith_policy.lockstep is not None


def _deepspeed(stage: int) -> DeepSpeedStrategy:
    """A DeepSpeedStrategy as configured for ``stage``, without DeepSpeed installed (its
    constructor requires it; shards_weights reads only the config)."""
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.config = {"zero_optimization": {"stage": stage}}
    return strategy


def test_vllm_is_refused_under_sharded_weights(arith_policy):
    with pytest.raises(ConfigError, match="generation.backend=vllm with FSDPStrategy: the weights are sharded"):
        _module_on(FSDPStrategy(), 2, arith_policy, backend="vllm").setup("fit")


def test_generate_backend_is_told_to_sync(arith_policy, monkeypatch, votes):
    seen = {}

    def generate(**kwargs):
        seen.update(kwargs)
        return torch.cat([kwargs["input_ids"], kwargs["input_ids"][:, :1]], dim=1)

    monkeypatch.setattr(arith_policy.model, "generate", generate)
    prompt_ids, prompt_mask = arith_policy.encode_prompts(["1+2="])
    arith_policy.sample(prompt_ids, prompt_mask, SamplingParams(max_new_tokens=2, backend="hf"))
    assert seen["synced_gpus"] is None  # generate's own FSDP / ZeRO-3 detection
    arith_policy.lockstep = votes([])
    arith_policy.sample(prompt_ids, prompt_mask, SamplingParams(max_new_tokens=2, backend="hf"))
    assert seen["synced_gpus"] is True


@pytest.mark.parametrize("strategy, expected", [(FSDPStrategy, [1, 1]), (DDPStrategy, [2, 1])])
def test_every_process_gets_as_many_validation_batches_under_sharded_weights(strategy, expected):
    from grpo_lightning.data.datamodule import PromptDataModule

    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(9)]  # 5 + 4 over 2 processes
    datamodule = PromptDataModule(rows, rows, batch_size=2, val_batch_size=4)
    batches = []
    for rank in (0, 1):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2, strategy=strategy())
        batches.append(len(datamodule.val_dataloader()))
    assert batches == expected  # FSDP: 8 of the 9 prompts, 4 each; DDP keeps all 9 (its forwards are local)
