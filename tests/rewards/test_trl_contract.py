"""Reward functions are called as TRL 1.16's GRPOTrainer calls them (keywords, extras, async,
message lists), and functions written for our old positional call keep working."""

from __future__ import annotations

import asyncio

import pytest

from grpo_lightning.config import RewardConfig, RewardFunctionConfig
from grpo_lightning.rewards import RewardError, WeightedReward

PROMPTS, COMPLETIONS, COLUMNS = ["p", "q"], ["ab", "xyz"], {"answer": ["ab", "no"]}
COMPLETION_IDS = [[5, 6], [7, 8, 9]]


def test_a_trl_style_function_is_called_by_keyword_with_every_extra():
    received = {}

    def trl_style(completions, **kwargs):  # the positional call gave it the prompts as completions
        received.update(kwargs, completions=completions)
        return [float(len(c)) for c in completions]

    def only_kwargs(**kwargs):
        return [float(len(ids)) for ids in kwargs["completion_ids"]]

    state = object()
    reward = WeightedReward({"trl": (trl_style, 1.0), "ids": (only_kwargs, 10.0)})
    scores = reward(PROMPTS, COMPLETIONS, COLUMNS, completion_ids=COMPLETION_IDS, context={"trainer_state": state})
    assert scores.total.tolist() == [2.0 + 20.0, 3.0 + 30.0]
    assert sorted(received) == [
        "answer",
        "completion_ids",
        "completions",
        "log_extra",
        "log_metric",
        "prompts",
        "trainer_state",
    ]
    assert received["prompts"] == PROMPTS and received["completions"] == COMPLETIONS
    assert received["answer"] == ["ab", "no"] and received["trainer_state"] is state


def test_a_function_of_today_without_kwargs_gets_its_arguments_and_no_extras():
    received = []

    def today(prompts, completions, answer):  # any extra would be a TypeError
        received.append((prompts, completions, answer))
        return [float(c == a) for c, a in zip(completions, answer)]

    scores = WeightedReward({"match": (today, 1.0)})(
        PROMPTS, COMPLETIONS, COLUMNS, completion_ids=COMPLETION_IDS, context={"trainer_state": object()}
    )
    assert scores.total.tolist() == [1.0, 0.0]
    assert received == [(PROMPTS, COMPLETIONS, ["ab", "no"])]


def test_a_function_with_other_positional_names_is_still_called_positionally():
    received = {}

    def positional(p, c, **kw):
        received.update(p=p, c=c, keys=sorted(kw))
        return [float(len(x)) for x in c]

    scores = WeightedReward({"pos": (positional, 1.0)})(
        PROMPTS, COMPLETIONS, COLUMNS, completion_ids=COMPLETION_IDS, context={"trainer_state": 1}
    )
    assert scores.total.tolist() == [2.0, 3.0]
    assert received == {
        "p": PROMPTS,
        "c": COMPLETIONS,
        "keys": ["answer", "completion_ids", "log_extra", "log_metric", "trainer_state"],
    }


def test_extras_reach_only_the_functions_that_name_them():
    received = {}

    def asks(completions, completion_ids, trainer_state, environments):  # no **kwargs: conversations is not offered
        received.update(completion_ids=completion_ids, trainer_state=trainer_state, environments=environments)
        return [0.0] * len(completions)

    class TokenCount:  # a callable object, as TRL's get_soft_overlong_punishment returns
        def __call__(self, completion_ids):
            return [float(len(ids)) for ids in completion_ids]

    context = {"trainer_state": "step 3", "environments": ["env0", "env1"], "conversations": [["m0"], ["m1"]]}
    reward = WeightedReward({"asks": (asks, 1.0), "tokens": (TokenCount(), 1.0)})
    scores = reward(PROMPTS, COMPLETIONS, {}, completion_ids=COMPLETION_IDS, context=context)
    assert scores.per_function["tokens"].tolist() == [2.0, 3.0]
    assert received == {"completion_ids": COMPLETION_IDS, "trainer_state": "step 3", "environments": ["env0", "env1"]}


def test_a_parameter_the_call_cannot_fill_is_named():
    def needs_solution(completions, solution, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"'acc' needs solution, which this call does not pass .*columns: answer"):
        WeightedReward({"acc": (needs_solution, 1.0)})(PROMPTS, COMPLETIONS, COLUMNS)


def test_a_failure_names_the_row_with_its_context_cut_to_that_row():
    def fails_on_broken(completions, environments, **kwargs):
        if "broken" in environments:
            raise ValueError("environment broke")
        return [1.0] * len(completions)

    reward = WeightedReward({"env": (fails_on_broken, 1.0)})
    with pytest.raises(RewardError, match=r"'env' raised ValueError: environment broke on prompt 'q'"):
        reward(PROMPTS, COMPLETIONS, {}, context={"environments": ["fine", "broken"]})


def test_logged_metrics_and_columns_come_back_in_the_scores():
    def logs(completions, log_extra, log_metric, **kwargs):
        log_extra("length", [len(c) for c in completions])
        log_metric("mean_length", sum(len(c) for c in completions) / len(completions))
        log_metric("calls", 1.0)
        return [0.0] * len(completions)

    def logs_too(prompts, completions, log_metric):
        log_metric("calls", 3.0)
        return [0.0] * len(completions)

    scores = WeightedReward({"logs": (logs, 1.0), "too": (logs_too, 1.0)})(PROMPTS, COMPLETIONS, {})
    assert scores.logged_metrics == {"mean_length": 2.5, "calls": 2.0}  # calls: the mean of 1 and 3
    assert scores.extra_columns == {"length": [2, 3]}
    assert WeightedReward({"too": (logs_too, 1.0)})(PROMPTS, COMPLETIONS, {}).extra_columns == {}  # per call


@pytest.mark.parametrize(
    "log, message",
    [
        (lambda log_extra, log_metric: log_extra("length", [1]), r"'bad' logged 1 values for the column 'length'"),
        (lambda log_extra, log_metric: log_extra("length", 7), r"'bad' logged a int for the column 'length'"),
        (lambda log_extra, log_metric: log_extra("bad", [1, 2]), r"column named 'bad' .*the name of a reward function"),
        (lambda log_extra, log_metric: log_metric("", 1.0), r"'bad' logged a metric named '' \(log_metric\)"),
        (lambda log_extra, log_metric: log_metric("bad", 1.0), r"metric named 'bad' .*the name of a reward function"),
        (lambda log_extra, log_metric: log_metric("m", "high"), r"'bad' logged the string 'high' for the metric 'm'"),
    ],
)
def test_bad_logging_is_refused_naming_function_and_column(log, message):
    def bad(completions, log_extra, log_metric, **kwargs):
        try:
            log(log_extra, log_metric)
        except Exception:  # a function's own catch-all must not hide its logging mistake
            pass
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=message):
        WeightedReward({"bad": (bad, 1.0)})(PROMPTS, COMPLETIONS, {})


@pytest.mark.timeout(30)
def test_async_functions_are_awaited_together():
    ping_ran, pong_ran = asyncio.Event(), asyncio.Event()

    async def ping(completions, log_metric, **kwargs):
        ping_ran.set()
        await pong_ran.wait()  # awaited one after the other, this never returns: the time limit fails the test
        log_metric("pings", 1.0)
        return [1.0] * len(completions)

    class Pong:
        async def __call__(self, completions, **kwargs):
            pong_ran.set()
            await ping_ran.wait()
            return [2.0] * len(completions)

    def sync(prompts, completions, **columns):
        return [4.0] * len(completions)

    reward = WeightedReward({"ping": (ping, 1.0), "sync": (sync, 1.0), "pong": (Pong(), 1.0)}, timeout_s=5)
    scores = reward(PROMPTS, COMPLETIONS, {})
    assert scores.total.tolist() == [7.0, 7.0]
    assert list(scores.per_function) == ["ping", "sync", "pong"]  # the configured order
    assert scores.logged_metrics == {"pings": 1.0}


def test_an_async_function_past_the_time_limit_is_named():
    async def slow(completions, **kwargs):
        await asyncio.sleep(5)
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"'slow' did not return within 0.2 s \(reward.timeout_s\) on a batch of 2"):
        WeightedReward({"slow": (slow, 1.0)}, timeout_s=0.2)(PROMPTS, COMPLETIONS, {})


def test_an_async_function_that_raises_is_described_like_a_sync_one():
    async def picky(prompts, completions, **kwargs):
        return [1.0 / (len(c) - 3) for c in completions]

    async def times_out_upstream(completions, **kwargs):  # its own TimeoutError is not the time limit
        raise TimeoutError("upstream")

    with pytest.raises(RewardError, match=r"'picky' raised ZeroDivisionError.*prompt 'second' with completion 'abc'"):
        WeightedReward({"picky": (picky, 1.0)}, timeout_s=5)(["first", "second"], ["ab", "abc"], {})
    with pytest.raises(RewardError, match=r"'upstream' raised TimeoutError: upstream on prompt 'p'"):
        WeightedReward({"upstream": (times_out_upstream, 1.0)}, timeout_s=5)(PROMPTS, COMPLETIONS, {})


def test_async_functions_work_when_the_caller_already_runs_an_event_loop():
    async def double(completions, **kwargs):
        await asyncio.sleep(0)
        return [2.0 * len(c) for c in completions]

    reward = WeightedReward({"double": (double, 1.0)})

    async def notebook_cell():  # Jupyter runs cells inside a loop: asyncio.run there would refuse
        return reward(PROMPTS, COMPLETIONS, {})

    assert asyncio.run(notebook_cell()).total.tolist() == [4.0, 6.0]


def test_message_lists_reach_the_built_in_rewards_as_the_last_assistant_text():
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4?"}]] * 3
    completions = [
        [{"role": "assistant", "content": "<think>3+4</think><answer>7</answer>"}],  # 36 characters
        [{"role": "assistant", "content": "<answer>8</answer>"}],  # 18
        [
            {"role": "assistant", "content": None, "tool_calls": [{"name": "add"}]},
            {"role": "tool", "content": "7"},
            {"role": "assistant", "content": "<think>t</think> <answer>7</answer>"},  # 35
        ],
    ]
    functions = {
        "math": RewardFunctionConfig(fn="grpo_lightning.rewards.math.math_answer"),
        "format": RewardFunctionConfig(fn="grpo_lightning.rewards.format.format_reward"),
        "length": RewardFunctionConfig(
            fn="grpo_lightning.rewards.length.length_penalty", kwargs={"max_length": 40, "cache_length": 10}
        ),
    }
    scores = WeightedReward.from_config(RewardConfig(functions=functions))(prompts, completions, {"answer": ["7"] * 3})
    assert scores.per_function["math"].tolist() == [1.0, 0.0, 1.0]
    assert scores.per_function["format"].tolist() == [1.0, 0.0, 1.0]
    assert scores.per_function["length"].tolist() == pytest.approx([-0.6, 0.0, -0.5])  # (30 - L) / 10 past 30


def test_a_failure_on_message_lists_quotes_the_last_messages():
    def fails_on_boom(completions, **kwargs):
        if any(c[-1]["content"] == "boom" for c in completions):
            raise ValueError("boom")
        return [1.0] * len(completions)

    prompts = [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]]
    completions = [[{"role": "assistant", "content": "fine"}], [{"role": "assistant", "content": "boom"}]]
    with pytest.raises(RewardError, match=r"on prompt user: 'q2' with completion assistant: 'boom'"):
        WeightedReward({"boom": (fails_on_boom, 1.0)})(prompts, completions, {})


# TRL's own reward functions, through WeightedReward; expectations computed by hand.


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_trl_think_format_reward():
    trl_rewards = pytest.importorskip("trl.rewards")
    completions = [
        conversation("<think>\nreasoning\n</think>\nanswer"),  # 1: one think block first
        conversation("<think>reasoning, never closed"),  # 0
        conversation("answer first <think>x</think>"),  # 0: must start with <think>
    ]
    reward = WeightedReward({"think": (trl_rewards.think_format_reward, 2.0)})
    assert reward([[{"role": "user", "content": "q"}]] * 3, completions, {}).total.tolist() == [2.0, 0.0, 0.0]


def test_trl_soft_overlong_punishment_reads_completion_ids():
    trl_rewards = pytest.importorskip("trl.rewards")
    punishment = trl_rewards.get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    completion_ids = [[1] * 5, [1] * 8, [1] * 10, [1] * 11]
    scores = WeightedReward({"overlong": (punishment, 1.0)})(["q"] * 4, ["c"] * 4, {}, completion_ids=completion_ids)
    # 0 up to 10 - 4 = 6 tokens, then (6 - L) / 4, then -1 past 10
    assert scores.total.tolist() == [0.0, -0.5, -1.0, -1.0]


def test_trl_accuracy_reward_with_its_solution_column_and_logged_columns():
    trl_rewards = pytest.importorskip("trl.rewards")
    pytest.importorskip("math_verify")  # accuracy_reward's own dependency (trl[math_verify])
    completions = [
        conversation(r"So it is \boxed{\frac{1}{3}}"),
        conversation(r"So it is \boxed{\frac{1}{2}}"),
        conversation(r"\boxed{3}"),
    ]
    solution = [r"\frac{1}{3}", r"\frac{1}{3}", "not a formula"]  # an unparsable gold answer: None
    scores = WeightedReward({"accuracy": (trl_rewards.accuracy_reward, 1.0)})(
        [[{"role": "user", "content": "q"}]] * 3, completions, {"solution": solution}
    )
    assert scores.per_function["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert scores.applicable["accuracy"].tolist() == [True, True, False]
    assert scores.extra_columns["solution"] == solution  # accuracy_reward logs it with log_extra
    assert sorted(scores.extra_columns) == ["answer_parsed", "gold_parsed", "solution"]
