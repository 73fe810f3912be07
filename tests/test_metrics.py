import pytest
import torch

from grpo_lightning.metrics import StageMeans


def test_weighted_means_over_micro_batches_and_reset():
    means = StageMeans(["actor/clip_frac", "reward/mean"])
    means.update({"actor/clip_frac": 0.5}, weight=2)
    means.update({"actor/clip_frac": 0.2}, weight=8)
    assert means.compute() == {"actor/clip_frac": pytest.approx(torch.tensor(0.26))}
    means.reset()
    assert means.compute() == {}


def test_undeclared_metric_is_an_error():
    with pytest.raises(KeyError, match="not declared"):
        StageMeans(["a/b"]).update({"a/c": 1.0})


def test_nan_is_an_error_not_a_silent_value():
    with pytest.raises(RuntimeError):
        StageMeans(["a/b"]).update({"a/b": float("nan")})
