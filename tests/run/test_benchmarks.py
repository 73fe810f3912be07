"""The arithmetic inside benchmarks/: the model FLOPs and MFU that bench_vs_trl reports."""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_vs_trl  # noqa: E402

from grpo_lightning.types import TokenBatch  # noqa: E402


def test_update_flops_count_each_distinct_prompt_once_and_the_head_on_completions(arith_policy):
    model = arith_policy.model  # hidden 128, MLP 256, 4 layers, tied head
    vocab = model.config.vocab_size
    body = 4 * (4 * 128 * 128 + 3 * 128 * 256)
    # Two prompts (3 and 2 tokens, left-padded), two completions each, 8 completion tokens.
    prompt_ids = torch.tensor([[5, 6, 7], [5, 6, 7], [0, 8, 9], [0, 8, 9]])
    prompt_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    update = TokenBatch(prompt_ids, prompt_mask, torch.ones_like(completion_mask), completion_mask)
    expected = 6 * (body * (5 + 8) + vocab * 128 * 8)
    assert bench_vs_trl.update_model_flops(model, update) == expected


def test_mfu_is_achieved_over_peak():
    args = argparse.Namespace(peak_tflops=4.0, device="cpu", precision="fp32")
    figures = bench_vs_trl._update_figures([[0.5, 1e12], [0.25, 1e12], [1.0, 1e12]], args)
    assert figures == {"update_s": 0.5, "update_tflops": 2.0, "update_mfu": 0.5}
    assert "update_mfu" not in bench_vs_trl._update_figures(
        [[0.5, 1e12]], argparse.Namespace(peak_tflops=None, device="cpu", precision="fp32")
    )


def test_phase_timers_label_each_call_and_keep_the_result():
    class Scorer:
        def score(self, batch, reference=False):
            return batch * 2

    times = {"reference log-probs": [], "policy forward": []}
    bench_vs_trl._wrap_timed(
        Scorer, "score", lambda _, kwargs: "reference log-probs" if kwargs.get("reference") else "policy forward", times
    )
    assert Scorer().score(3, reference=True) == 6 and Scorer().score(4) == 8
    assert [len(times["reference log-probs"]), len(times["policy forward"])] == [1, 1]
    assert all(t >= 0 for calls in times.values() for t in calls)


def test_scaling_sweep_hands_the_worker_every_argument_it_reads(monkeypatch, tmp_path):
    import subprocess

    import bench_scaling

    commands = []

    def fake_run(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=bench_vs_trl.RESULT_TAG + "{}", stderr="")

    monkeypatch.setattr(bench_vs_trl.subprocess, "run", fake_run)
    sweep = argparse.Namespace(threads=1, device="cpu", precision="fp32", warmup=2, steps=8)
    bench_vs_trl._run_worker(
        "ours", 8, bench_scaling.worker_arguments(sweep, ["algorithm.group_size=8"]), tmp_path / "model", tmp_path
    )
    (command,) = commands
    assert "--ours-override=algorithm.group_size=8" in command
    assert command[command.index("--warmup") + 1] == "2" and command[command.index("--prompt-tokens") + 1] == "0"


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_by_name(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench_vs_trl.parse_args(["--vocab-size", "10"])
    assert "--vocab-size 10" in capsys.readouterr().err
    assert bench_vs_trl.parse_args(["--vocab-size", "16"]).vocab_size == 16
