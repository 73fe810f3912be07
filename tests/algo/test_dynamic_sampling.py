"""DAPO dynamic sampling, with rewards that make some groups constant; overlong shaping."""

import csv
from dataclasses import replace

import pytest
import torch

from grpo_lightning.algo.advantages import constant_groups
from grpo_lightning.algo.dynamic_sampling import dynamic_sample
from grpo_lightning.algo.shaping import overlong_penalty
from grpo_lightning.rewards import RewardScores
from grpo_lightning.run.train import train
from grpo_lightning.types import Rollout, TokenBatch

G = 2


def _scored(group_rewards: list[list[float]], tag: str, prompt_len: int, completion_len: int):
    """One round: len(group_rewards) prompts named tag0, tag1, ... with G completions each."""
    rows = len(group_rewards) * G
    tokens = TokenBatch(
        torch.ones(rows, prompt_len, dtype=torch.long),
        torch.ones(rows, prompt_len, dtype=torch.long),
        torch.ones(rows, completion_len, dtype=torch.long),
        torch.ones(rows, completion_len, dtype=torch.long),
    )
    prompts = [f"{tag}{i}" for i in range(len(group_rewards)) for _ in range(G)]
    rollout = Rollout(
        tokens=tokens,
        prompts=prompts,
        completions=["c"] * rows,
        columns={"answer": list(prompts)},
        group_ids=torch.arange(len(group_rewards)).repeat_interleave(G),
        truncated=torch.zeros(rows, dtype=torch.bool),
    )
    total = torch.tensor([r for group in group_rewards for r in group])
    return rollout, RewardScores(total, {"f": total}, {"f": torch.ones(rows, dtype=torch.bool)})


def test_constant_groups():
    assert constant_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [True, False, True]


def test_constant_groups_are_replaced_by_later_rounds():
    rounds = [
        _scored([[1, 1], [0, 1], [0, 0]], "a", 3, 2),  # keeps a1
        _scored([[2, 2], [1, 0], [0, 2]], "b", 5, 4),
    ]  # keeps b1, b2 -> 3 groups
    rollout, scores, used, kept_frac = dynamic_sample(lambda i: rounds[i], num_groups=3, group_size=G, max_rounds=5)
    assert used == 2
    assert kept_frac == pytest.approx(3 / 6)
    assert rollout.prompts == ["a1", "a1", "b1", "b1", "b2", "b2"]
    assert rollout.columns["answer"] == rollout.prompts
    assert scores.total.tolist() == [0, 1, 1, 0, 0, 2]
    assert not constant_groups(scores.total, G).any()
    assert rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    # rounds of different lengths are padded: prompts on the left, completions on the right
    assert rollout.tokens.prompt_ids.shape == (6, 5) and rollout.tokens.completion_ids.shape == (6, 4)
    assert rollout.tokens.prompt_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert rollout.tokens.completion_mask[0].tolist() == [1, 1, 0, 0]


def test_turn_rewards_follow_their_episodes_through_the_rounds():
    first, second = _scored([[1, 1], [0, 1]], "a", 2, 2), _scored([[2, 0], [3, 3]], "b", 2, 2)
    first = (first[0], replace(first[1], turn_rewards=[[1.0], [0.5, 0.5], [-1.0, 1.0], [1.0]]))
    rounds = [first, second]  # the second round's functions returned episode rewards only
    rollout, scores, _, _ = dynamic_sample(lambda i: rounds[i], num_groups=2, group_size=G, max_rounds=2)
    assert rollout.prompts == ["a1", "a1", "b0", "b0"]
    assert scores.turn_rewards == [[-1.0, 1.0], [1.0], None, None]


def test_short_batch_is_filled_with_dropped_groups_after_the_last_round():
    rounds = [_scored([[1, 1], [0, 1]], "a", 2, 2), _scored([[0, 0], [3, 3]], "b", 2, 2)]
    rollout, scores, used, kept_frac = dynamic_sample(lambda i: rounds[i], num_groups=2, group_size=G, max_rounds=2)
    assert used == 2 and kept_frac == pytest.approx(1 / 4)
    assert rollout.prompts[:2] == ["a1", "a1"] and len(rollout.prompts) == 2 * G
    assert rollout.group_ids.tolist() == [0, 0, 1, 1]


def test_dynamic_sampling_draws_until_every_process_has_enough(votes):
    rounds = [
        _scored([[0, 1], [1, 0]], "a", 2, 2),
        _scored([[1, 2], [2, 1]], "b", 2, 2),
        _scored([[0, 3], [3, 0]], "c", 2, 2),
    ]
    # This process has its 2 groups after one round; the other needs a second one.
    vote = votes([False, True])
    rollout, scores, used, kept_frac = dynamic_sample(
        lambda i: rounds[i], num_groups=2, group_size=G, max_rounds=3, lockstep=vote
    )
    assert used == 2 and vote.asked == [True, True]  # no vote before the first round
    assert rollout.prompts == ["a0", "a0", "a1", "a1"]  # its own first groups, the extra ones left out
    assert kept_frac == 1.0
    alone, _, used_alone, _ = dynamic_sample(lambda i: rounds[i], num_groups=2, group_size=G, max_rounds=3)
    assert used_alone == 1 and alone.prompts == rollout.prompts


def test_non_finite_counts_of_every_round_are_kept():
    from dataclasses import replace

    rounds = [_scored([[1, 1], [0, 1]], "a", 2, 2), _scored([[2, 2], [1, 0]], "b", 2, 2)]
    rounds = [(rollout, replace(scores, non_finite={"f": count})) for (rollout, scores), count in zip(rounds, (1, 2))]
    _, scores, used, _ = dynamic_sample(lambda i: rounds[i], num_groups=2, group_size=G, max_rounds=2)
    assert used == 2 and scores.non_finite == {"f": 3}


def test_filter_groups_by_decides_which_reward_must_vary():
    """DAPO keeps 0 < #correct < G, judged before length shaping: a group all correct whose shaped
    rewards differ (one completion ran into the overlong buffer) is dropped by `correct` and
    `reward`, kept by `shaped_reward`."""
    from dataclasses import replace

    rollout, scores = _scored([[1.0, 0.75], [1.0, 0.0]], "a", 2, 2)  # shaped totals
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0])
    scores = replace(scores, per_function={"correct": correct}, unshaped=correct.clone())
    kept = {}
    for by in ("shaped_reward", "reward", "correct"):
        picked, _, _, kept[by] = dynamic_sample(
            lambda i: (rollout, scores), num_groups=2, group_size=G, max_rounds=1, filter_groups_by=by
        )
        assert picked.prompts[:2] == (["a0", "a0"] if by == "shaped_reward" else ["a1", "a1"])
    assert kept == {"shaped_reward": 1.0, "reward": 0.5, "correct": 0.5}


def test_overlong_penalty_by_hand():
    # max 10, buffer 4: no penalty up to 6, then -(L - 6) / 4 * factor, -factor at 10
    lengths = torch.tensor([3, 6, 7, 8, 10])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, 0.5), torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5]))


@pytest.mark.parametrize("filter_groups_by", ["shaped_reward", "correct"])
def test_dynamic_sampling_end_to_end(compose_config, random_arith_dir, tmp_path, filter_groups_by):
    cfg = compose_config(
        f"model.name_or_path={random_arith_dir}",
        "algorithm.group_size=4",
        "algorithm.filter_zero_std_groups=true",
        f"algorithm.filter_groups_by={filter_groups_by}",
        "algorithm.max_generation_rounds=4",
        "reward.functions.correct.fn=tests.signals.constant_for_even_first_digit",
        "generation.max_new_tokens=6",
        "trainer.max_steps=2",
        "validate_before_training=false",
    )
    train(cfg)
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("sampling/rounds")]
    assert len(rows) == 2
    for row in rows:
        rounds, kept = float(row["sampling/rounds"]), float(row["sampling/kept_group_frac"])
        assert 1 <= rounds <= 4 and 0 < kept < 1  # some groups were constant and dropped
        if rounds < 4:  # the batch filled up: no constant group left
            assert float(row["reward/frac_zero_std"]) == 0.0


def test_refills_come_in_an_order_of_their_own_and_leave_the_main_stream_alone():
    from grpo_lightning.data.datamodule import PromptDataModule

    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)]
    datamodule = PromptDataModule(rows, rows[:4], batch_size=4, val_batch_size=4, seed=3)
    main = [batch["prompt"] for batch in datamodule.train_dataloader()]
    main_sampler = datamodule.train_sampler
    first, second = ([batch["prompt"] for batch in datamodule.refill_dataloader()] for _ in range(2))
    assert datamodule.train_sampler is main_sampler and main_sampler.epoch == 0
    assert first != main and second != first  # its own order, a new one each pass
    assert sorted(sum(first, [])) == sorted(sum(main, []))  # the same training rows


def test_the_refill_position_survives_a_checkpoint_with_no_refill_in_between():
    """A process that draws no refill between a resume and its next checkpoint keeps the position
    it resumed at (else a second resume would restart its refills from the beginning)."""
    from types import SimpleNamespace

    from grpo_lightning.data.datamodule import PromptDataModule

    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)]
    progress = SimpleNamespace(current=SimpleNamespace(processed=1))
    trainer = SimpleNamespace(
        current_epoch=0,
        global_rank=0,
        world_size=1,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )

    def datamodule():
        module = PromptDataModule(rows, rows[:4], batch_size=4, val_batch_size=4, seed=3)
        module.trainer = trainer
        module.train_dataloader()
        return module

    first = datamodule()
    refills = first.refill_batches()
    drawn = [next(refills)["prompt"] for _ in range(3)]
    saved = first.state_dict()
    assert saved["refill_per_rank"] == [(0, 3)]
    resumed = datamodule()
    resumed.load_state_dict(saved)
    assert resumed.state_dict()["refill_per_rank"] == [(0, 3)]  # nothing drawn since the resume
    assert next(resumed.refill_batches())["prompt"] == next(refills)["prompt"] not in drawn
