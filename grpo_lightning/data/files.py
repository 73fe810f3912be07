"""Prompt rows from files and datasets (``data=jsonl``, ``data=hf``), read with ``datasets``.

    data.path=train.jsonl                  # JSONL, JSON, CSV or Parquet, by extension
    data.path=openai/gsm8k data.config_name=main data.val_split=test   # a hub dataset (data=hf)

Rows are shuffled with the run's seed; validation rows come from ``data.val_path``, from
``data.val_split`` of the same dataset, or are the first ``data.val_fraction`` of the shuffled
training rows. ``data.answer_key`` is renamed to ``answer``, the keyword the built-in rewards read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

from grpo_lightning.config import ConfigError, DataConfig

Row = dict[str, Any]

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File extension -> the ``datasets`` builder that reads it."""


def read_rows(
    path: str, *, split: str = "train", config_name: Optional[str] = None, field_name: str = "data.path"
) -> list[Row]:
    """All rows of a data file, a local dataset directory, or a split of a hub dataset."""
    import datasets

    local = Path(path).expanduser()
    fmt = FILE_FORMATS.get(local.suffix.lower())
    if (fmt is not None or path.startswith((".", "/", "~"))) and not local.exists():
        raise ConfigError(f"{field_name}={path!r}: no such file or directory")
    if fmt is None and local.is_file():
        raise ConfigError(
            f"{field_name}={path!r}: a {local.suffix or 'suffix-less'} file is not a format it reads; give a "
            f"{'/'.join(sorted(FILE_FORMATS))} file (by its extension), a dataset directory, or a hub dataset id"
        )
    if fmt is not None and split != "train":
        raise ConfigError(
            f"data.split={split!r}: a single {local.suffix} file is one split; use "
            "data.val_path or data.val_fraction for validation rows"
        )
    try:
        if fmt is not None:
            # A single file is one split, which datasets calls "train" whatever it holds.
            dataset = datasets.load_dataset(fmt, data_files=str(local), split="train")
        elif local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
            dataset = datasets.load_from_disk(str(local))
            dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        else:
            dataset = datasets.load_dataset(path, config_name, split=split)
    except Exception as error:  # datasets raises many types; all mean "cannot read this"
        if fmt is not None:
            _check_has_rows(local, fmt, field_name)
        if local.suffix.lower() == ".jsonl":
            _check_jsonl(local, field_name)  # names the line, where datasets' message does not
        raise ConfigError(
            f"{field_name}={path!r} could not be read ({type(error).__name__}: {error}). "
            f"Give a {'/'.join(sorted(FILE_FORMATS))} file, a dataset directory, or a hub "
            "dataset id that is cached or reachable"
        ) from None
    return dataset.to_list()


def _check_has_rows(path: Path, fmt: str, field_name: str) -> None:
    """An empty text file, or a CSV with its header alone, holds no rows: say that, not what
    datasets makes of it. (Parquet is binary: left to datasets.)"""
    if fmt == "parquet":
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in handle if line.strip()]
    if not lines:
        raise ConfigError(f"{field_name}={str(path)!r} holds no rows: the file is empty or only blank lines")
    if fmt == "csv" and len(lines) == 1:
        raise ConfigError(f"{field_name}={str(path)!r} holds no rows: only the header line {lines[0].strip()!r}")


def _check_jsonl(path: Path, field_name: str) -> None:
    """Each non-blank line must be a JSON object: the error names the file and the line. Run only
    once datasets has failed to read the file, so a good file is parsed once."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"{field_name}={str(path)!r}, line {number}: not valid JSON ({error.msg} at "
                    f"column {error.colno}): {line.strip()[:80]!r}"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"{field_name}={str(path)!r}, line {number}: a JSONL row must be an object "
                    f"with the prompt and answer columns, found {type(row).__name__}"
                )


def load_splits(cfg: DataConfig, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """(train_rows, val_rows) as configured by ``cfg`` (see the module docstring)."""
    if cfg.path is None:
        raise ConfigError("data.path is not set; give the prompt file, e.g. data.path=prompts.jsonl")
    rng = random.Random(seed)
    train_rows = read_rows(cfg.path, split=cfg.split, config_name=cfg.config_name)
    rng.shuffle(train_rows)
    if cfg.val_path is not None:
        val_rows = read_rows(cfg.val_path, field_name="data.val_path")
        rng.shuffle(val_rows)
    elif cfg.val_split is not None:
        val_rows = read_rows(cfg.path, split=cfg.val_split, config_name=cfg.config_name, field_name="data.val_split")
        rng.shuffle(val_rows)
    else:
        if train_rows and cfg.prompt_key not in train_rows[0]:  # the real problem of a short file too
            raise ConfigError(
                f"data.prompt_key={cfg.prompt_key!r} is not a column of data.path={cfg.path!r}; "
                f"columns found: {sorted(train_rows[0])}"
            )
        if len(train_rows) < 2:
            raise ConfigError(
                f"data.path={cfg.path!r} holds {len(train_rows)} row(s): too few to hold "
                "out a validation split; add rows or give data.val_path"
            )
        num_val = min(len(train_rows) - 1, max(1, round(len(train_rows) * cfg.val_fraction)))
        val_rows, train_rows = train_rows[:num_val], train_rows[num_val:]
    if cfg.answer_key is not None:
        train_rows = rename_answer(train_rows, cfg.answer_key, "train")
        val_rows = rename_answer(val_rows, cfg.answer_key, "validation")
    return train_rows, val_rows


def rename_answer(rows: list[Row], answer_key: str, split: str) -> list[Row]:
    """Rows with column ``answer_key`` renamed to ``answer``.

    >>> rename_answer([{"q": "1+1?", "sol": "2"}], "sol", "train")
    [{'q': '1+1?', 'answer': '2'}]
    """
    if rows and answer_key not in rows[0]:
        raise ConfigError(
            f"data.answer_key={answer_key!r} is not a column of the {split} rows; columns found: {sorted(rows[0])}"
        )
    return [{("answer" if key == answer_key else key): value for key, value in row.items()} for row in rows]
