"""The arithmetic inside benchmarks/: the model FLOPs and MFU that bench_vs_trl reports, and the pure
pieces of benchmarks/common.py (options, worker results, step figures, spreads, tables)."""

import argparse
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_vs_trl  # noqa: E402
import common  # noqa: E402

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
        return subprocess.CompletedProcess(command, 0, stdout=common.RESULT_TAG + "{}", stderr="")

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    sweep = argparse.Namespace(threads=1, device="cpu", precision="fp32", warmup=2, steps=8)
    bench_vs_trl.run_training_worker(
        "ours", 8, bench_scaling.worker_arguments(sweep, ["algorithm.group_size=8"]), tmp_path / "model", tmp_path
    )
    (command,) = commands
    assert "--ours-override=algorithm.group_size=8" in command
    assert command[command.index("--warmup") + 1] == "2" and command[command.index("--prompt-tokens") + 1] == "0"


def test_the_real_model_task_reaches_both_workers(monkeypatch, tmp_path):
    """--size smollm2 --beta 0: each worker is told the model and the beta; TRL's reward reads the
    assistant's reply out of the conversational completion, as ours reads the plain text."""
    import subprocess

    commands = []

    def fake_run(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=common.RESULT_TAG + "{}", stderr="")

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    args = bench_vs_trl.parse_args(["--size", "smollm2", "--beta", "0"])
    bench_vs_trl.run_training_worker("trl", 8, args, tmp_path / "model", tmp_path)
    (command,) = commands
    assert command[command.index("--size") + 1] == "smollm2" and command[command.index("--beta") + 1] == "0.0"
    task = bench_vs_trl.TASKS["smollm2"]
    assert task.chat and (task.prompts_per_step, task.max_new_tokens) == (4, 16)
    replies = [[{"role": "assistant", "content": "12 + 34 = 46"}], [{"role": "assistant", "content": "47"}]]
    assert bench_vs_trl.chat_math_answer(["q", "q"], replies, answer=["46", "46"]) == [1.0, 0.0]
    train, _ = bench_vs_trl.bench_chat_splits(prompt_tokens=3)
    assert train[0]["prompt"].startswith(common.preamble(3) + "Calculate ")


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        bench_vs_trl.parse_args(["--vocab-size", "10"])
    assert "--vocab-size 10" in capsys.readouterr().err
    assert bench_vs_trl.parse_args(["--vocab-size", "16"]).vocab_size == 16


def test_shared_options_keep_every_script_s_defaults():
    parser = common.make_parser("First paragraph.\n\nThe rest.")
    assert parser.description == "First paragraph."
    common.add_model(parser)
    common.add_steps(parser, steps=8)
    common.add_repeats(parser, 7)
    common.add_threads(parser)
    common.add_device(parser)
    common.add_prompt_tokens(parser)
    common.add_worker(parser, ["a", "b"])
    assert vars(parser.parse_args([])) == {
        "size": "tiny",
        "vocab_size": 32_000,
        "steps": 8,
        "warmup": 2,
        "repeats": 7,
        "threads": 1,
        "device": "cpu",
        "precision": "fp32",
        "prompt_tokens": 0,
        "worker": None,
    }
    defaults = vars(bench_vs_trl.parse_args([]))
    assert {key: defaults[key] for key in ("steps", "warmup", "repeats", "threads", "vocab_size", "seed")} == {
        "steps": 12,
        "warmup": 2,
        "repeats": 3,
        "threads": 1,
        "vocab_size": 32_000,
        "seed": 0,
    }
    scoring = common.shape_parser("Doc.", ["8x4x8x8"], repeats=15, modes=("full", "shared"))
    assert vars(scoring.parse_args([])) == {
        "shapes": ["8x4x8x8"],
        "repeats": 15,
        "threads": 1,
        "worker": None,
        "shape": None,
    }
    worker = scoring.parse_args(["--worker", "shared", "--shape", "8", "4", "120", "8"])
    assert (worker.worker, worker.shape) == ("shared", [8, 4, 120, 8])
    assert common.flags(worker, "repeats", "threads", "worker") == [
        "--repeats",
        "15",
        "--threads",
        "1",
        "--worker",
        "shared",
    ]
    assert common.flags(argparse.Namespace(prompt_tokens=20)) == []
    assert common.flags(argparse.Namespace(prompt_tokens=20), "prompt_tokens") == ["--prompt-tokens", "20"]
    assert common.parse_shape("8x4x120x8") == [8, 4, 120, 8]
    with pytest.raises(ValueError):
        common.parse_shape("8x4x120")


def test_a_worker_s_figures_are_its_last_tagged_line():
    figures = {"seconds": [0.5, 0.25], "peak_rise_mib": 12.5}
    stdout = "a library's chatter\n" + common.RESULT_TAG + '{"old": 1}\n' + common.RESULT_TAG + json.dumps(figures)
    assert common.read_result(stdout + "\nmore chatter\n") == figures
    assert common.read_result("no figures\n") is None


def test_a_failing_or_silent_worker_is_reported_with_its_stderr(monkeypatch):
    import subprocess

    answers = iter(
        [
            subprocess.CompletedProcess([], 1, stdout=common.RESULT_TAG + "{}", stderr="Traceback: boom"),
            subprocess.CompletedProcess([], 0, stdout="nothing tagged", stderr="quiet"),
            subprocess.CompletedProcess([], 0, stdout=common.RESULT_TAG + '{"x": 2}', stderr=""),
        ]
    )
    envs = []
    monkeypatch.setattr(common.subprocess, "run", lambda command, env, **_: envs.append(env) or next(answers))
    with pytest.raises(RuntimeError, match="shared worker failed with exit code 1:\nTraceback: boom"):
        common.run_worker(["python"], 2, "shared worker")
    with pytest.raises(RuntimeError, match="exit code 0:\nquiet"):
        common.run_worker(["python"], 2, "shared worker")
    assert common.run_worker(["python"], 2, "shared worker") == {"x": 2}
    assert envs[0]["OMP_NUM_THREADS"] == "2" and envs[0]["HF_HUB_OFFLINE"] == "1"
    assert envs[0]["PYTHONPATH"].split(os.pathsep)[0] == str(Path(common.__file__).resolve().parents[1])


def test_step_figures_use_the_intervals_after_warmup():
    # (wall, CPU) at each step end: the first two steps are warm-up, then intervals 1, 3, 2 s wall.
    ends = [[0.0, 0.0], [10.0, 5.0], [12.0, 6.0], [13.0, 6.5], [16.0, 8.0], [18.0, 9.0]]
    assert common.step_intervals(ends, 2) == ([1.0, 3.0, 2.0], [0.5, 1.5, 1.0])
    figures = common.step_figures({"step_ends": ends, "mean_completion_length": 6.0, "peak_rss_mib": 500.0}, 2, 32)
    assert figures == {
        "step_s": 2.0,
        "step_s_min": 1.0,
        "step_s_max": 3.0,
        "cpu_step_s": 1.0,
        "completions_per_s": 16.0,
        "tokens_per_s": 96.0,
        "mean_completion_length": 6.0,
        "peak_rss_mib": 500.0,
    }


def test_spreads_tables_and_agreement_print_as_the_results_record_them():
    spread = common.Spread.of([0.0125, 0.0100, 0.0300], 1000)
    assert spread == (12.5, 10.0, 30.0)
    assert f"{spread.median:7.1f} ms {spread.range()}" == "   12.5 ms (10.0, 30.0)"
    assert spread.range(sep="-") == "(10.0-30.0)" and spread.range(".0f", sep="-") == "(10-30)"
    assert spread.range(".4g", labels=True) == "(min 10, max 30)"
    assert bench_vs_trl._summary([2.0]) == "2" and bench_vs_trl._summary([1.0, 2.0, 4.0]) == "2 (min 1, max 4)"
    assert common.table_header("a", "b c") == "| a | b c |\n|---|---|"
    assert common.table_row("8x4x8x8", 1.5, "no") == "| 8x4x8x8 | 1.5 | no |"
    common.check_agree([1.0, 2.0], [1.00005, 2.0], 1e-4, "differ")
    common.check_agree([], [], 1e-4, "differ")
    with pytest.raises(AssertionError, match="shared and full log-probs differ"):
        common.check_agree([1.0, 2.0], [1.0, 2.001], 1e-4, "shared and full log-probs differ")


def test_timed_passes_return_the_last_output_and_run_the_untimed_step_between():
    outputs, between = iter(["first", "second", "third"]), []
    passes = common.time_passes(lambda: next(outputs), 3, between=lambda: between.append(True))
    assert passes.last == "third" and len(passes.seconds) == 3 and len(between) == 3
    assert all(seconds >= 0 for seconds in passes.seconds) and passes.peak_rise_mib >= 0
    assert passes.figures() == {"peak_rise_mib": passes.peak_rise_mib, "seconds": passes.seconds}


def test_the_preamble_is_digits_one_token_each():
    assert common.preamble(0) == "" and common.preamble(12) == "012345678901"
    tokenizer = common.task_tokenizer()
    assert len(tokenizer(common.preamble(25), add_special_tokens=False)["input_ids"]) == 25


def test_utilization_counts_the_models_products_and_weights_once(arith_policy):
    import utilization

    model = arith_policy.model  # hidden 128, MLP 256, 4 layers, tied head
    body, head = utilization.linear_shapes(model)
    assert body == {(128, 128): 4 * 4, (128, 256): 4 * 2, (256, 128): 4 * 1}
    assert head == (128, model.config.vocab_size)
    tied_once = sum(p.numel() for p in model.parameters()) * 4
    assert utilization.weight_bytes(model) == tied_once
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_utilization_records_each_sampling_calls_decoding_steps():
    import utilization

    class Sampler:
        def sample(self, prompt_ids, prompt_mask, sampling):
            return torch.zeros(prompt_ids.shape[0], 5, dtype=torch.long)  # [rows, decoding steps]

    calls = utilization.record_sampling(Sampler)
    assert Sampler().sample(torch.zeros(3, 2), None, None).shape == (3, 5)
    assert [(steps, rows) for _, steps, rows in calls] == [(5, 3)] and calls[0][0] >= 0


GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _gpu_check(*args: str):
    import subprocess

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, env=env, timeout=120)


def test_gpu_check_dry_run_prints_the_tests_and_the_bf16_bench():
    done = _gpu_check("--dry-run", "--steps", "6", "--python", sys.executable)
    assert done.returncode == 0, done.stderr
    tests, bench = done.stdout.strip().splitlines()
    assert "pytest" in tests and "tests/test_cuda.py" in tests and "test_vllm_backend.py" in tests
    assert "--size 0.5b --device cuda --precision bf16" in bench and "--steps 6" in bench
    assert "--utilization" in bench and "--sides ours trl" in bench
    only_tests = _gpu_check("--dry-run", "--skip-bench")
    assert only_tests.returncode == 0 and only_tests.stdout.count("\n") == 1 and "pytest" in only_tests.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "2"], "--steps must be a whole number >= 4"),
        (["--steps", "many"], "--steps must be a whole number >= 4"),
        (["--bogus"], "unknown option '--bogus'"),
        (["--out"], "--out needs a directory"),
    ],
)
def test_gpu_check_refuses_bad_arguments_clearly(args, message):
    done = _gpu_check(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so_and_runs_nothing(tmp_path):
    done = _gpu_check("--out", str(tmp_path / "out"), "--python", sys.executable)
    assert done.returncode == 2 and "no CUDA GPU visible" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_help_lists_the_options():
    done = _gpu_check("--help")
    assert done.returncode == 0 and "--dry-run" in done.stdout and "bf16 training steps" in done.stdout


@pytest.mark.slow
def test_bench_async_runs_each_setting_and_prints_its_table():
    """The asynchronous-rollouts benchmark as RESULTS.md runs it, shortened: one row per setting."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_async.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--steps",
            "3",
            "--warmup",
            "1",
            "--staleness",
            "0",
            "1",
            "--sampler-threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1:3] for row in rows] == [[" 0 ", " - "], [" 1 ", " 1 "]]
