import pytest
import torch

from grpo_lightning.metrics import StageMeans


def test_weighted_means_over_micro_batches_and_reset():
    means = StageMeans(["actor/clip_frac", "reward/mean"])
    means.update({"actor/clip_frac": 0.5}, weight=2)
    means.update({"actor/clip_frac": 0.2}, weight=8)
    assert means.compute() == {"actor/clip_frac": pytest.approx(torch.tensor(0.26))}
    means.reset()
    means.update({"reward/mean": torch.tensor([1.0, 0.0, 0.0, 1.0])})  # every element counts once
    means.update({"reward/mean": torch.tensor([1.0, 1.0])}, weight=torch.tensor(2))
    assert means.compute() == {"reward/mean": pytest.approx(torch.tensor((2 + 4) / (4 + 4)))}


def test_an_empty_tensor_adds_nothing():
    means = StageMeans(["reward/x/mean"])
    means.update({"reward/x/mean": torch.tensor([])})
    means.update({"reward/x/mean": torch.tensor([0.5])})
    assert means.compute() == {"reward/x/mean": pytest.approx(torch.tensor(0.5))}


def test_undeclared_metric_is_an_error():
    with pytest.raises(KeyError, match="not declared"):
        StageMeans(["a/b"]).update({"a/c": 1.0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_value_is_an_error_naming_the_metric(bad):
    means = StageMeans(["a/b", "a/c"])
    means.update({"a/b": 1.0, "a/c": bad})
    with pytest.raises(RuntimeError, match=r"non-finite values were logged for \['a/c'\]"):
        means.compute()


def test_compute_sums_the_states_of_every_process():
    # What torchmetrics' sync does across processes: the states are summed (dist_reduce_fx).
    ranks = [StageMeans(["a/b"]), StageMeans(["a/b"])]
    ranks[0].update({"a/b": 1.0}, weight=3)
    ranks[1].update({"a/b": 0.0}, weight=1)
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute() == {"a/b": pytest.approx(torch.tensor(0.75))}


def test_per_token_advantages_become_each_completions_token_mean_in_the_rollout_table():
    from grpo_lightning.types import per_completion_advantages

    advantages = torch.tensor([[1.0, 3.0, 9.0], [-2.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(per_completion_advantages(advantages, mask), torch.tensor([2.0, -2.0]))
    outcome = torch.tensor([0.5, -0.5])
    assert per_completion_advantages(outcome, mask) is outcome
