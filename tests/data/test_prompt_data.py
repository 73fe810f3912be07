"""Prompt files and formatting: formats, splits, answer column, chat template, length limit."""

from __future__ import annotations

import json
import logging

import pytest

from grpo_lightning.config import ConfigError, DataConfig
from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.data.files import load_splits
from grpo_lightning.data.formatting import PromptFormatter
from grpo_lightning.data.tasks.arithmetic import build_tokenizer

ROWS = [{"q": f"{a}+{a}=", "sol": f"#### {2 * a}", "level": a % 3} for a in range(10, 30)]


def _write(path, rows):
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        dataset.to_csv(str(path), index=False)
    else:
        dataset.to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_format_gives_the_same_rows(tmp_path, suffix):
    path = _write(tmp_path / f"p{suffix}", ROWS)
    train, val = load_splits(DataConfig(path=str(path), prompt_key="q", answer_key="sol", val_fraction=0.25))
    assert len(train) == 15 and len(val) == 5
    assert sorted(r["q"] for r in train + val) == sorted(r["q"] for r in ROWS)
    assert set(train[0]) == {"q", "answer", "level"}  # answer_key renamed, other columns kept
    assert {r["q"] for r in train}.isdisjoint(r["q"] for r in val)


def test_shuffle_follows_the_seed_and_val_path_is_used(tmp_path):
    path = _write(tmp_path / "p.jsonl", ROWS)
    cfg = DataConfig(path=str(path), prompt_key="q")
    assert load_splits(cfg, seed=1) == load_splits(cfg, seed=1)
    assert load_splits(cfg, seed=1)[0] != load_splits(cfg, seed=2)[0]
    val_path = _write(tmp_path / "v.csv", ROWS[:3])
    data = PromptDataModule.from_config(
        DataConfig(path=str(path), prompt_key="q", val_path=str(val_path), max_val_prompts=2, batch_size=4)
    )
    assert len(data.train_rows) == 20 and len(data.val_rows) == 2


def test_dataset_directory_with_named_splits(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:12]), "test": datasets.Dataset.from_list(ROWS[12:])}
    ).save_to_disk(str(tmp_path / "ds"))
    train, val = load_splits(DataConfig(path=str(tmp_path / "ds"), val_split="test", answer_key="sol"))
    assert len(train) == 12 and len(val) == 8 and "answer" in val[0]
    with pytest.raises(ConfigError, match="data.split='dev'"):
        load_splits(DataConfig(path=str(_write(tmp_path / "p.jsonl", ROWS)), split="dev"))


def test_unknown_hub_dataset_fails_with_the_field(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="data.path='no-such-org/no-such-dataset' could not be read"):
        load_splits(DataConfig(path="no-such-org/no-such-dataset"))


def test_bad_columns_and_paths_name_the_field(tmp_path):
    path = _write(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(ConfigError, match="data.answer_key='nope'"):
        load_splits(DataConfig(path=str(path), prompt_key="q", answer_key="nope"))
    with pytest.raises(ConfigError, match="data.prompt_key='prompt'"):
        PromptDataModule.from_config(DataConfig(path=str(path), batch_size=2))
    with pytest.raises(ConfigError, match="no such file"):
        load_splits(DataConfig(path=str(tmp_path / "absent.parquet")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl', line 3: not valid JSON \(Expecting property name"):
        load_splits(DataConfig(path=str(bad)))


def test_data_config_errors_at_load(compose_config, tmp_path):
    from grpo_lightning.config import to_train_config

    base = ["model.name_or_path=/x", "data=jsonl"]
    with pytest.raises(ConfigError, match="data.path"):  # data=jsonl leaves path missing
        to_train_config(compose_config(*base, "data.path=null"))
    with pytest.raises(ConfigError, match="data.overlong_prompts"):
        to_train_config(compose_config(*base, "data.path=a.jsonl", "data.overlong_prompts=cut"))
    with pytest.raises(ConfigError, match="data.val_fraction"):
        to_train_config(compose_config(*base, "data.path=a.jsonl", "data.val_fraction=1.5"))
    with pytest.raises(ConfigError, match="data.answer_key applies to data.path only"):
        to_train_config(compose_config("model.name_or_path=/x", "data.answer_key=answer"))
    with pytest.raises(ConfigError, match="val_do_sample=true"):
        to_train_config(compose_config(*base, "data.path=a.jsonl", "generation.val_num_samples=4"))
    with pytest.raises(ConfigError, match="data.val_fraction applies to data.path only"):
        to_train_config(compose_config("model.name_or_path=/x", "data.val_fraction=0.2"))
    with pytest.raises(ConfigError, match="model.lora.alpha is set but model.lora.r=0"):
        to_train_config(compose_config(*base, "data.path=a.jsonl", "model.lora.alpha=32"))
    with pytest.raises(ConfigError, match="model.lora.dropout"):
        to_train_config(compose_config(*base, "data.path=a.jsonl", "model.lora.r=8", "model.lora.dropout=1.0"))


def test_plain_prompts_are_unchanged_and_length_limit_drops_with_a_logged_count(caplog):
    rows = [{"prompt": "1+1="}, {"prompt": "11+11="}, {"prompt": "111+111="}]
    formatter = PromptFormatter(build_tokenizer(), max_length=7)  # <bos> + 6 characters
    with caplog.at_level(logging.WARNING, logger="grpo_lightning.data.formatting"):
        kept = formatter.prepare(rows, "train")
    assert [r["prompt"] for r in kept] == ["1+1=", "11+11="]
    assert "train: 1 of 3 prompts are longer than data.max_prompt_length=7 tokens: dropped" in caplog.text
    with pytest.raises(ConfigError, match="overlong_prompts=truncate"):
        PromptFormatter(build_tokenizer(), max_length=2).prepare(rows, "validation")


def test_truncation_keeps_the_end_of_the_prompt():
    formatter = PromptFormatter(build_tokenizer(), max_length=5, overlong="truncate")
    kept = formatter.prepare([{"prompt": "12+34="}, {"prompt": "1+2="}], "train")
    assert [r["prompt"] for r in kept] == ["+34=", "1+2="]


def _chat_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}="
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}={% endif %}"
    )
    return tokenizer


def test_chat_template_system_prompt_and_message_lists():
    formatter = PromptFormatter(_chat_tokenizer(), apply_chat_template=True, system_prompt="9")
    assert not formatter.add_special_tokens  # the template writes its own special tokens
    rows = [{"prompt": "1+2", "answer": "3"}, {"prompt": [{"role": "user", "content": "4+5"}], "answer": "9"}]
    assert [r["prompt"] for r in formatter.prepare(rows, "train")] == ["9=1+2=", "9=4+5="]
    with pytest.raises(ConfigError, match="apply_chat_template=true"):
        PromptFormatter(_chat_tokenizer()).format([{"role": "user", "content": "1"}])
    with pytest.raises(ConfigError, match="no chat template"):
        PromptFormatter(build_tokenizer(), apply_chat_template=True)
    with pytest.raises(ConfigError, match="data.system_prompt"):
        PromptFormatter(build_tokenizer(), system_prompt="be brief")


def test_templated_prompts_are_encoded_without_a_second_bos(arith_policy):
    bos = arith_policy.tokenizer.bos_token_id
    ids, _ = arith_policy.encode_prompts(["1+2="])
    assert ids[0, 0].item() == bos
    arith_policy.add_special_tokens = False  # what train() sets after a chat template
    ids, mask = arith_policy.encode_prompts(["1+2="])
    assert bos not in ids[0].tolist() and mask.sum().item() == 4


def test_an_instruct_tokenizer_used_without_its_chat_template_is_warned_about(caplog):
    with caplog.at_level("WARNING", logger="grpo_lightning.data.formatting"):
        PromptFormatter(build_tokenizer())  # no template: nothing to say
        assert not caplog.records
        PromptFormatter(_chat_tokenizer(), apply_chat_template=True)
        assert not caplog.records
        PromptFormatter(_chat_tokenizer())
    (record,) = caplog.records
    assert "has a chat template, but data.apply_chat_template=false" in record.getMessage()


def test_the_batch_of_any_future_step_is_the_one_the_loader_will_give():
    """Asynchronous rollouts generate ahead from upcoming_train_batch: across an epoch boundary it
    must be the loader's own batch, for every process."""
    from grpo_lightning.data.datamodule import PromptDataModule

    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    for world, rank in ((1, 0), (2, 1)):
        datamodule = PromptDataModule(rows, rows[:4], batch_size=3, val_batch_size=4, seed=5)
        datamodule._rank_and_world = lambda world=world, rank=rank: (rank, world)
        loaded = []
        for epoch in range(3):
            loader = datamodule.train_dataloader()
            datamodule.train_sampler.set_epoch(epoch)
            loaded += list(loader)
        per_epoch = datamodule.train_sampler.batches_per_epoch
        assert len(loaded) == 3 * per_epoch
        assert [datamodule.upcoming_train_batch(step) for step in range(len(loaded))] == loaded
