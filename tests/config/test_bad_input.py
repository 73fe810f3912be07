"""Every kind of bad input, fed through the real ``grpo-train`` command: a short message naming
what is wrong, a non-zero exit, no traceback. Hydra's own errors (unknown key, wrong type,
unknown group option) exit with 1, ours with 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BAD_INPUTS = """
def raises(prompts, completions, **columns):
    return [1.0 / 0 for _ in completions]

def too_few(prompts, completions, **columns):
    return [1.0] * (len(completions) - 1)

def nan(prompts, completions, **columns):
    return [float("nan")] * len(completions)

def empty_train(**kwargs):
    return [], [{"prompt": "1+1=", "answer": "2"}]

def huge(prompts, completions, **columns):
    # finite in Python, infinite in the float32 the rewards are summed in
    return [1e300 if i % 2 else 0.0 for i in range(len(completions))]

def hangs(prompts, completions, **columns):
    import time

    time.sleep(600)

def exits(prompts, completions, **columns):
    import sys

    sys.exit(3)

def overflow(prompts, completions, **columns):
    # finite rewards whose group mean overflows float32: non-finite advantages and loss
    return [3e38 if i % 2 == 0 else 0.0 for i in range(len(completions))]
"""

SMALL = [
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "validate_before_training=false",
    "trainer.val_every_n_steps=100",
]

# (overrides, expected exit code, text the message must contain)
CASES = {
    # config
    "unknown key": (["algorithm.foo=1"], 1, "Could not override 'algorithm.foo'"),
    "unknown key added": (["+algorithm.foo=1"], 2, "unknown config key(s): algorithm.foo"),
    "wrong type": (["algorithm.group_size=four"], 1, "could not be converted to Integer"),
    "group of one": (["algorithm.group_size=1"], 2, "algorithm.group_size must be >= 2"),
    "no logging": (["trainer.log_every_n_steps=0"], 2, "trainer.log_every_n_steps must be >= 1 (got 0)"),
    "gsm8k preset with short completions": (
        ["reward=gsm8k", "generation.max_new_tokens=16"],
        2,
        "reward.functions.length_penalty.kwargs: length_penalty needs 0 < cache_length <= max_length "
        "(got cache_length=64, max_length=16)",
    ),
    "batch does not divide": (["algorithm.mini_batch_size=5"], 2, "algorithm.mini_batch_size=5 must divide"),
    "clip range": (["algorithm.clip_range=-0.2"], 2, "algorithm.clip_range must be > 0"),
    "no new tokens": (["generation.max_new_tokens=0"], 2, "generation.max_new_tokens must be >= 1"),
    "empty log-prob chunks": (
        ["model.logprob_chunk_size=0"],
        2,
        "model.logprob_chunk_size must be >= 1 or null for automatic (got 0)",
    ),
    "unknown algorithm": (["algorithm=nope"], 1, "Could not find 'algorithm/nope'"),
    "unknown estimator": (
        ["algorithm.adv_estimator=nope"],
        2,
        "algorithm.adv_estimator='nope' is unknown; choose one of [",
    ),
    "unknown non-finite policy": (["reward.non_finite=ignore"], 2, "reward.non_finite='ignore' is unknown"),
    "missing checkpoint": (["ckpt_path=missing.ckpt"], 2, "ckpt_path='missing.ckpt' is not a file"),
    "infinite learning rate": (["optim.lr=inf"], 2, "optim.lr must be a finite number (got inf)"),
    "unknown strategy": (["trainer.strategy=foo"], 2, "trainer: You selected an invalid strategy name"),
    # data
    "data builder does not resolve": (["data.builder=nowhere.load"], 2, "data.builder='nowhere.load' does not resolve"),
    "missing prompt column": (["data.prompt_key=question"], 2, "columns found: ['answer', 'prompt']"),
    "builder rejects its arguments": (
        ["data.builder_kwargs.num_val=0"],
        2,
        "data.builder_kwargs={'num_val': 0}: ValueError: num_val must be",
    ),
    "empty split": (["data.builder=bad_inputs.empty_train"], 2, "the train split is empty"),
    # rewards
    "reward does not resolve": (
        ["reward.functions.correct.fn=nowhere.reward"],
        2,
        "reward.functions.correct.fn='nowhere.reward' does not resolve",
    ),
    "reward raises": (
        ["reward.functions.correct.fn=bad_inputs.raises"],
        2,
        "reward function 'correct' raised ZeroDivisionError",
    ),
    "reward exits": (
        ["reward.functions.correct.fn=bad_inputs.exits"],
        2,
        "reward function 'correct' called sys.exit(3)",
    ),
    "reward hangs": (
        ["reward.functions.correct.fn=bad_inputs.hangs", "reward.timeout_s=2"],
        2,
        "reward function 'correct' did not return within 2.0 s (reward.timeout_s)",
    ),
    "reward beyond float32": (["reward.functions.correct.fn=bad_inputs.huge"], 2, "beyond float32's range"),
    "reward module with a syntax error": (
        ["reward.functions.correct.fn=broken_syntax.reward"],
        2,
        "broken_syntax.py, line 1 is not valid Python (expected ':'); fix that file",
    ),
    "devices of the wrong type": (["trainer.devices=abc"], 2, "trainer: `devices` selected with `CPUAccelerator`"),
    "model directory with only config.json": (
        ["model.name_or_path={models}/only_config"],
        2,
        "holds config.json but no weights",
    ),
    "model directory without tokenizer files": (
        ["model.name_or_path={models}/no_tokenizer"],
        2,
        "holds no tokenizer files",
    ),
    "truncated weights": (
        ["model.name_or_path={models}/truncated"],
        2,
        "its weights could not be read (SafetensorError",
    ),
    "reward count": (["reward.functions.correct.fn=bad_inputs.too_few"], 2, "returned 7 values for 8 completions"),
    "reward nan": (["reward.functions.correct.fn=bad_inputs.nan"], 2, "returned nan for prompt"),
    # numerics
    "non-finite loss": (
        [
            "reward.functions.correct.fn=bad_inputs.overflow",
            "algorithm.normalize_by_std=false",
            "algorithm.max_consecutive_skips=0",
        ],
        2,
        "consecutive updates had a non-finite",
    ),
}


def grpo_train(args: list[str], cwd: Path, import_dirs: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """The real ``grpo-train`` command, offline, with ``import_dirs`` importable (reward modules)."""
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    if import_dirs:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, import_dirs), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "grpo_lightning.run.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def helpers_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bad_inputs")
    (directory / "bad_inputs.py").write_text(BAD_INPUTS)
    (directory / "broken_syntax.py").write_text("def reward(prompts, completions, **columns)\n    return []\n")
    return directory


@pytest.fixture(scope="module")
def broken_models(random_arith_dir, tmp_path_factory) -> Path:
    """Model directories with a part missing or damaged, made from a working one."""
    import shutil

    root = tmp_path_factory.mktemp("broken_models")
    (root / "only_config").mkdir()
    shutil.copy(random_arith_dir / "config.json", root / "only_config")
    shutil.copytree(random_arith_dir, root / "no_tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "special*"))
    shutil.copytree(random_arith_dir, root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_a_message(case, helpers_dir, broken_models, random_arith_dir, tmp_path):
    overrides, code, message = CASES[case]
    overrides = [override.replace("{models}", str(broken_models)) for override in overrides]
    args = [
        f"output_dir={tmp_path}",
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        *SMALL,
        *overrides,
    ]
    result = grpo_train(args, tmp_path, import_dirs=(helpers_dir, REPO))
    assert result.returncode == code, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if code == 2:
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


JSONL_CONFIG = REPO / "conf" / "data" / "jsonl.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not JSONL_CONFIG.is_file(), reason="data=jsonl is not on this branch (issue 3)")
@pytest.mark.parametrize("case", ["missing file", "malformed line", "missing column"])
def test_bad_jsonl_fails_with_file_and_line(case, random_arith_dir, tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = {
        "missing file": None,
        "malformed line": ['{"prompt": "1+1=", "answer": "2"}'] * 2 + ['{"prompt": "2+2=", "answer": '],
        "missing column": ['{"question": "1+1=", "answer": "2"}'] * 4,
    }[case]
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    expected = {
        "missing file": str(path),
        "malformed line": f"data.path='{path}', line 3: not valid JSON",
        "missing column": "question",
    }[case]
    args = [
        f"output_dir={tmp_path}/run",
        f"model.name_or_path={random_arith_dir}",
        "data=jsonl",
        f"data.path={path}",
        *SMALL,
    ]
    result = grpo_train(args, tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_an_output_dir_that_is_a_file_is_one_line(random_arith_dir, tmp_path):
    (tmp_path / "taken").write_text("")
    result = grpo_train([f"output_dir={tmp_path / 'taken'}", *SMALL], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: output_dir={tmp_path / 'taken'} is a file, not a directory; give a directory"
    )


DATA_FILES = {
    "empty file": ("prompts.jsonl", "", "holds no rows: the file is empty or only blank lines"),
    "blank lines": ("prompts.jsonl", "\n\n\n", "holds no rows: the file is empty or only blank lines"),
    "csv header only": ("prompts.csv", "prompt,answer\n", "holds no rows: only the header line 'prompt,answer'"),
    "number prompts": (
        "prompts.jsonl",
        "".join(f'{{"prompt": {n}, "answer": "{n}"}}\n' for n in range(4)),
        "a prompt (column data.prompt_key) is int 0; prompts must be text",
    ),
    "null prompts": (
        "prompts.jsonl",
        "".join(f'{{"prompt": null, "answer": "{n}"}}\n' for n in range(4)),
        "a prompt (column data.prompt_key) is NoneType None",
    ),
    "unsupported extension": ("prompts.txt", "1+1=\n", "a .txt file is not a format it reads"),
    "empty prompts": (
        "prompts.jsonl",
        "".join(f'{{"prompt": "{"" if n % 2 else "1+1="}", "answer": "2"}}\n' for n in range(8)),
        "rows have an empty prompt",
    ),
    "one row without the prompt column": (
        "prompts.jsonl",
        '{"question": "1+1=", "answer": "2"}\n',
        "data.prompt_key='prompt' is not a column of data.path=",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_FILES))
def test_a_data_file_without_usable_rows_is_named_for_what_it_lacks(case, random_arith_dir, tmp_path):
    name, content, expected = DATA_FILES[case]
    (tmp_path / name).write_text(content)
    args = [f"output_dir={tmp_path}/run", f"model.name_or_path={random_arith_dir}", "data=jsonl"]
    result = grpo_train([*args, f"data.path={tmp_path / name}", *SMALL], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
