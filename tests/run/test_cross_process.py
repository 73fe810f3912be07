"""What processes must agree on, checked with two real processes (gloo on CPU).

Batch statistics (scale_rewards=batch, REINFORCE++, both token-level forms' batch scale, the token count
of a token-mean loss) come out as in one process holding the whole batch; and with lockstep
(sharded weights) the decoding loop makes the same number of forward calls on every process
even when one process's rows all end at the first token.

The token-mean gradient is checked in two halves: the workers scale a loss the way
GRPOModule._update_policy does, under real DDP; the last test checks that the module does scale
it that way (with a stand-in for the other process).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_lightning.algo.advantages import batch_advantages, compute_advantages, token_level_advantages
from tests.processes import child_env

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 3.0, 1.0, 0.0, 2.0])  # [8], 4 groups of 2
TOKEN_REWARDS = torch.arange(24, dtype=torch.float).view(8, 3) % 5  # [8, 3]
TOKEN_MASK = torch.tensor(
    [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]
)  # rank 0: 9 tokens, rank 1: 6
FEATURES = torch.linspace(-1, 1, 8 * 3 * 2).view(8, 3, 2)  # [8, 3, 2] a token's input

WORKER = """
import datetime
import gc
import os
import sys
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_lightning.algo.advantages import batch_advantages, compute_advantages, token_level_advantages
from grpo_lightning.distributed import mean_over_processes
from grpo_lightning.policy.generation.loop import sample_with_kv_cache

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
data = torch.load(f"{out}/data.pt")
rows = slice(4 * rank, 4 * rank + 4)  # two whole groups per process
rewards, group_ids = data["rewards"][rows], torch.arange(2).repeat_interleave(2)
result = {
    "batch": compute_advantages("grpo", rewards, group_ids=group_ids, group_size=2, eps=1e-6, scale_rewards="batch"),
    "reinforce_pp": batch_advantages(rewards, None, data["mask"][rows], estimator="reinforce_pp", group_ids=group_ids,
                                     group_size=2, eps=1e-6, scale_rewards="none", gamma=1.0),
    "process_batch": batch_advantages(rewards, data["token_rewards"][rows], data["mask"][rows], estimator="grpo",
                                      group_ids=group_ids, group_size=2, eps=1e-6, scale_rewards="batch", gamma=1.0),
    "token_batch": token_level_advantages(data["token_rewards"][rows], data["mask"][rows], group_ids=group_ids,
                                          gamma=1.0, eps=1e-6, scale_rewards="batch"),
}

# A token-mean loss as GRPOModule scales it, under DDP's gradient averaging.
torch.manual_seed(0)
head = torch.nn.Linear(2, 1)
ddp = DistributedDataParallel(head)
mask = data["mask"][rows].float()
values = ddp(data["features"][rows]).squeeze(-1)                                # [4, 3]
units = mask.sum()
loss = (values * mask).sum() / units
(loss * units / mean_over_processes(units)).backward()
result["grad"] = head.weight.grad.clone()

# Lockstep decoding: rank 0's rows all end at the first token, rank 1's never do.
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=32)).eval()
calls = []
model.get_input_embeddings().register_forward_pre_hook(lambda *_: calls.append(1))

def all_agree(decision):
    flag = torch.tensor(int(decision))
    dist.all_reduce(flag)
    return int(flag) == 2

eos = list(range(11)) if rank == 0 else [11]
prompt = torch.tensor([[1, 2, 3]] * 2)
tokens = sample_with_kv_cache(model, prompt, torch.ones_like(prompt), max_new_tokens=5, eos_token_ids=eos,
                              pad_token_id=0, lockstep=all_agree)
result["calls"], result["tokens"] = len(calls), tokens
torch.save(result, f"{out}/rank{rank}.pt")

# DDP's reducer keeps the group and its last gradient all-reduce alive; left to the interpreter's
# finalization, gloo frees those tensors without the GIL and aborts the process (SIGABRT, "terminate
# called without an active exception": once in a CI run). Release it first, leave together, and skip
# finalization: what this worker had to say is on disk.
del ddp
gc.collect()
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
"""


def _run_two_processes(tmp_path: Path) -> list[dict]:
    torch.save(
        {"rewards": REWARDS, "token_rewards": TOKEN_REWARDS, "mask": TOKEN_MASK, "features": FEATURES},
        tmp_path / "data.pt",
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = child_env(one_thread=True)
    store = tmp_path / "store"
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(store), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # a collective mismatch (what this file guards against) would hang them
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_processes_agree_with_one_holding_the_whole_batch(tmp_path):
    ranks = _run_two_processes(tmp_path)

    def joined(key):
        return torch.cat([ranks[0][key], ranks[1][key]])

    group_ids = torch.arange(4).repeat_interleave(2)
    whole = dict(group_ids=group_ids, group_size=2, eps=1e-6)
    torch.testing.assert_close(joined("batch"), compute_advantages("grpo", REWARDS, scale_rewards="batch", **whole))
    common = dict(whole, scale_rewards="none", gamma=1.0)
    torch.testing.assert_close(
        joined("reinforce_pp"), batch_advantages(REWARDS, None, TOKEN_MASK, estimator="reinforce_pp", **common)
    )
    torch.testing.assert_close(
        joined("process_batch"),
        batch_advantages(REWARDS, TOKEN_REWARDS, TOKEN_MASK, estimator="grpo", **dict(common, scale_rewards="batch")),
    )
    torch.testing.assert_close(
        joined("token_batch"),
        token_level_advantages(
            TOKEN_REWARDS, TOKEN_MASK, group_ids=group_ids, gamma=1.0, eps=1e-6, scale_rewards="batch"
        ),
    )
    # One process's own statistics would differ (the test could not pass by accident):
    own = batch_advantages(
        REWARDS[:4], None, TOKEN_MASK[:4], estimator="reinforce_pp", **dict(common, group_ids=group_ids[:4])
    )
    assert not torch.allclose(own, ranks[0]["reinforce_pp"])

    # The token-mean gradient is that of all 15 tokens, not the mean of two per-process means.
    torch.manual_seed(0)
    head = torch.nn.Linear(2, 1)
    mask = TOKEN_MASK.float()
    ((head(FEATURES).squeeze(-1) * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(ranks[0]["grad"], head.weight.grad)
    torch.testing.assert_close(ranks[1]["grad"], head.weight.grad)

    # Lockstep: both processes made the prefill and 4 decode calls (rank 1 needed all 5 tokens);
    # rank 0's rows ended at their first token and are padding after it.
    assert ranks[0]["calls"] == ranks[1]["calls"] == 5
    assert ranks[0]["tokens"].shape == ranks[1]["tokens"].shape == (2, 5)
    assert (ranks[0]["tokens"][:, 1:] == 0).all()


def test_the_update_divides_by_the_token_count_of_every_process(
    compose_config, random_arith_dir, tmp_path, monkeypatch
):
    """GRPOModule's side of the token mean: a second process holding 3x this one's tokens halves
    this process's gradient (DDP then averages the two), seen in the logged pre-clip grad norm."""
    import csv

    import grpo_lightning.module as module
    from grpo_lightning.run.train import train

    def grad_norm(output_dir):
        # A gradient on every machine: spread in every group and an entropy bonus (tests/signals.py).
        train(
            compose_config(
                f"model.name_or_path={random_arith_dir}",
                "algorithm.loss_agg=token-mean",
                "reward.functions.correct.fn=tests.signals.alternating",
                "algorithm.entropy_coef=0.01",
                "trainer.max_steps=1",
                "validate_before_training=false",
                "seed=3",
                f"output_dir={output_dir}",
            )
        )
        with open(output_dir / "metrics.csv") as handle:
            return next(float(row["actor/grad_norm"]) for row in csv.DictReader(handle) if row["actor/grad_norm"])

    alone = grad_norm(tmp_path / "alone")
    assert alone > 0, "the test needs a gradient"
    monkeypatch.setattr(module, "mean_over_processes", lambda units: (units + 3 * units) / 2)
    beside_a_bigger_one = grad_norm(tmp_path / "beside")
    assert beside_a_bigger_one == pytest.approx(alone / 2, rel=1e-4)
