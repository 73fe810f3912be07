"""Agent episodes (grpo_lightning/policy/agent): tool-call parsing, tools and their runner,
environments, and the multi-turn rollout's tokens, masks and limits, with a scripted sampler
(tests/policy/agent_fixtures.py) so that every episode's course is known."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace

import pytest
import torch

from grpo_lightning.config import ConfigError
from grpo_lightning.policy.agent import Agent, ToolCall, ToolRunner, tool_from_function
from grpo_lightning.policy.agent.tool_calls import (
    TOOL_CALL_FORMATS,
    detect_tool_call_format,
    parse_llama3,
    parse_mistral,
    parse_qwen,
)
from grpo_lightning.policy.base import SamplingParams
from tests.policy.agent_fixtures import (
    LLAMA3_TEMPLATE,
    NO_TOOLS_TEMPLATE,
    QWEN25_TEMPLATE,
    chat_tokenizer,
    script_sampler,
    tiny_policy,
)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def divide(a: int, b: int) -> float:
    """Divide a by b.

    Args:
        a: The dividend.
        b: The divisor.
    """
    return a / b


class Counter:
    """A TRL-style environment: built with no arguments, reset with the row, its methods are tools."""

    def __init__(self):
        self.total = 0
        self.target = None
        self.resets = []

    def reset(self, **row):
        self.resets.append(row)
        self.target = int(row["target"])
        return f" Reach {self.target}."

    def add(self, amount: int) -> str:
        """Add to the running total.

        Args:
            amount: How much to add.
        """
        self.total += amount
        return str(self.total)

    @property
    def done(self) -> bool:
        return self.total >= self.target

    def get_reward(self) -> float:
        return 1.0 if self.total == self.target else 0.0


def tool_call(name: str, **arguments) -> str:
    import json

    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def multiply_script(context: str) -> str:
    """Call multiply with the question's numbers, then answer the tool's result."""
    if "<tool_response>" in context:
        return re.findall(r"<tool_response>\n(.*?)\n</tool_response>", context)[-1]
    a, b = re.findall(r"What is (\d+) \* (\d+)", context)[-1]
    return tool_call("multiply", a=int(a), b=int(b))


SAMPLING = SamplingParams(max_new_tokens=96, record_logprobs=True)
BATCH = {"prompt": ["What is 12 * 34?", "What is 5 * 6?"], "answer": ["408", "30"]}


@pytest.fixture
def qwen_policy():
    return tiny_policy(chat_tokenizer())


def full_text(policy, rollout, row: int) -> str:
    tokens = rollout.tokens
    ids = tokens.prompt_ids[row][tokens.prompt_mask[row].bool()].tolist()
    ids += tokens.completion_ids[row][tokens.completion_present[row].bool()].tolist()
    return policy.tokenizer.decode(ids, skip_special_tokens=False)


# -- parsing ---------------------------------------------------------------------------------


def test_qwen_parser_reads_calls_and_reports_malformed_ones():
    two = parse_qwen(
        'Let me see.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
        '<tool_call>{"name": "g"}</tool_call>'
    )
    assert two.content == "Let me see."
    assert two.calls == [ToolCall("f", {"x": 1}), ToolCall("g", {})]
    assert not two.malformed
    as_string = parse_qwen('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>')
    assert as_string.calls == [ToolCall("f", {"x": 2})]
    bad_json = parse_qwen('<tool_call>{"name": "f", "arguments": {"x": }</tool_call>')
    assert bad_json.calls == [] and "not valid JSON" in bad_json.malformed[0] and bad_json.wants_tools
    no_name = parse_qwen('<tool_call>{"arguments": {}}</tool_call>')
    assert 'needs a "name"' in no_name.malformed[0]
    unclosed = parse_qwen('answer <tool_call>{"name": "f"')
    assert unclosed.malformed == ["<tool_call> without its closing </tool_call>"] and unclosed.content == "answer"
    plain = parse_qwen("The answer is 408.")
    assert not plain.wants_tools and plain.content == "The answer is 408."


def test_llama3_parser_reads_json_turns_and_leaves_answers():
    call = parse_llama3('{"name": "multiply", "parameters": {"a": 3, "b": 4}}')
    assert call.calls == [ToolCall("multiply", {"a": 3, "b": 4})]
    tagged = parse_llama3('<|python_tag|>{"name": "f", "arguments": {"x": 1}}')
    assert tagged.calls == [ToolCall("f", {"x": 1})]
    several = parse_llama3('[{"name": "f", "parameters": {}}, {"name": "g", "parameters": {"y": 2}}]')
    assert [c.name for c in several.calls] == ["f", "g"]
    assert parse_llama3("408").calls == [] and parse_llama3("408").content == "408"
    assert not parse_llama3('{"answer": 408}').wants_tools  # a JSON answer, not a call
    assert parse_llama3('{"name": "f", "parameters": {').malformed


def test_mistral_parser():
    parsed = parse_mistral('ok[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}]')
    assert parsed.content == "ok" and parsed.calls == [ToolCall("f", {"x": 1})]
    assert parse_mistral("[TOOL_CALLS]{oops").malformed


def test_the_format_is_read_from_the_chat_template():
    assert detect_tool_call_format(QWEN25_TEMPLATE) == "qwen"
    assert detect_tool_call_format(LLAMA3_TEMPLATE) == "llama3"
    assert sorted(TOOL_CALL_FORMATS) == ["llama3", "mistral", "qwen"]
    with pytest.raises(ConfigError, match="agent.tool_call_format"):
        detect_tool_call_format(NO_TOOLS_TEMPLATE)


# -- tools and their runner --------------------------------------------------------------------


def test_a_tool_needs_type_hints_and_a_docstring():
    def no_docstring(a: int) -> int:
        return a

    def no_hints(a):
        """Echo.

        Args:
            a: A value.
        """
        return a

    for function in (no_docstring, no_hints):
        with pytest.raises(ConfigError, match=rf"tool '{function.__name__}' \(agent.tools\[0\]\).*type hint"):
            Agent([function])
    assert tool_from_function(multiply, "x").schema["function"]["parameters"]["required"] == ["a", "b"]


def test_two_tools_of_one_name_are_refused():
    def add(amount: int) -> int:
        """Add.

        Args:
            amount: How much.
        """
        return amount

    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        Agent([add], Counter)
    with pytest.raises(ConfigError, match="two tools are named 'multiply'"):
        Agent([multiply, multiply])


def test_runner_reports_unknown_tools_bad_arguments_and_exceptions():
    runner, tool = ToolRunner(workers=2, timeout_s=5), tool_from_function(divide, "divide")
    results = runner.run(
        [
            (tool, ToolCall("divide", {"a": 6, "b": 3})),
            (None, ToolCall("nope", {})),
            (tool, ToolCall("divide", {"a": 6})),
            (tool, ToolCall("divide", {"a": "6", "b": 3})),
            (tool, ToolCall("divide", {"a": 1, "b": 0})),
        ]
    )
    assert [r.error_kind for r in results] == [None, "unknown_tool", "bad_arguments", "bad_arguments", "exception"]
    assert results[0].content == "2.0"
    assert "missing a required argument: 'b'" in results[2].content
    assert "argument 'a' must be integer, got str" in results[3].content
    assert "ZeroDivisionError" in results[4].content


def test_runner_runs_calls_concurrently():
    """Four calls that each wait for all four to have started: only concurrent calls get through."""
    barrier = threading.Barrier(4, timeout=10)

    def meet(tag: int) -> int:
        """Wait for the others.

        Args:
            tag: Which call this is.
        """
        barrier.wait()
        return tag

    tool = tool_from_function(meet, "meet")
    results = ToolRunner(workers=4, timeout_s=20).run([(tool, ToolCall("meet", {"tag": i})) for i in range(4)])
    assert [r.content for r in results] == ["0", "1", "2", "3"]
    assert all(r.error_kind is None for r in results)


def test_runner_times_out_a_hung_call_and_keeps_going():
    release = threading.Event()

    def hang(seconds: int) -> str:
        """Hang until released.

        Args:
            seconds: Ignored.
        """
        release.wait(30)
        return "late"

    runner = ToolRunner(workers=1, timeout_s=0.2)
    hung, quick = tool_from_function(hang, "hang"), tool_from_function(multiply, "multiply")
    started = time.monotonic()
    first = runner.run([(hung, ToolCall("hang", {"seconds": 1}))])
    assert first[0].error_kind == "timeout" and "did not return within 0.2 s" in first[0].content
    # The one worker still hangs: the pool is replaced, and the next call runs.
    second = runner.run([(quick, ToolCall("multiply", {"a": 2, "b": 3}))])
    assert second[0].content == "6"
    assert time.monotonic() - started < 20
    release.set()


def test_async_tools_are_awaited():
    async def shout(text: str) -> str:
        """Upper-case a text.

        Args:
            text: The text.
        """
        return text.upper()

    result = ToolRunner(2, 5).run([(tool_from_function(shout, "shout"), ToolCall("shout", {"text": "hi"}))])
    assert result[0].content == "HI"


# -- environments ------------------------------------------------------------------------------


def test_environment_errors_name_the_class_and_the_fix(qwen_policy):
    class NoReset:
        def act(self, x: int) -> int:
            """Act.

            Args:
                x: Input.
            """
            return x

    class Broken:
        def __init__(self):
            raise RuntimeError("no licence")

        def reset(self, **row):
            return None

    class Picky:
        def reset(self, secret):
            return None

        def guess(self, n: int) -> str:
            """Guess.

            Args:
                n: The guess.
            """
            return "?"

    with pytest.raises(ConfigError, match="NoReset has no reset method"):
        Agent(environment=NoReset)
    with pytest.raises(ConfigError, match="cannot be built.*RuntimeError: no licence"):
        Agent(environment=Broken)
    agent = Agent(environment=Picky)
    script_sampler(qwen_policy, lambda context: "hi")
    with pytest.raises(ConfigError, match=r"Picky.reset\(\*\*row\) cannot take this dataset row.*\*\*kwargs"):
        agent.rollout(qwen_policy, BATCH, "prompt", 1, SAMPLING)


def test_a_chat_template_without_tools_is_refused_at_start():
    policy = tiny_policy(chat_tokenizer(NO_TOOLS_TEMPLATE))
    with pytest.raises(ConfigError, match="does not render tools"):
        Agent([multiply]).check_policy(policy)


@pytest.mark.parametrize("field,value", [("max_turns", 0), ("max_tool_calls", 0), ("max_tokens_per_turn", 0)])
def test_limits_below_one_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"agent.{field} must be >= 1"):
        Agent([multiply], **{field: value})


# -- the rollout ---------------------------------------------------------------------------------


def test_tokens_in_tokens_out_and_the_loss_mask(qwen_policy):
    turns = script_sampler(qwen_policy, multiply_script)
    rollout = Agent([multiply]).rollout(qwen_policy, BATCH, "prompt", 2, SAMPLING)
    tokenizer, tokens = qwen_policy.tokenizer, rollout.tokens
    assert rollout.completions == ["408", "408", "30", "30"]
    assert [e.ended_by for e in rollout.episodes] == ["answer"] * 4
    assert rollout.prompts == ["What is 12 * 34?"] * 2 + ["What is 5 * 6?"] * 2
    assert rollout.columns == {"answer": ["408", "408", "30", "30"]}
    for row, episode in enumerate(rollout.episodes):
        call, answer = turns[row], turns[4 + row]  # turn 1 of each row, then turn 2
        completion = tokens.completion_ids[row][tokens.completion_present[row].bool()].tolist()
        inserted = completion[len(call) : len(completion) - len(answer)]
        # The sampler's ids, exactly: it spelt <tool_call> character by character, which encoding
        # the text would have made one token.
        assert completion[: len(call)] == call and completion[-len(answer) :] == answer
        assert tokenizer.convert_tokens_to_ids("<tool_call>") not in call
        assert tokenizer.decode(inserted, skip_special_tokens=False) == (
            f"\n<|im_start|>user\n<tool_response>\n{episode.messages[-2]['content']}\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        sampled = tokens.completion_mask[row][: len(completion)].tolist()
        assert sampled == [1] * len(call) + [0] * len(inserted) + [1] * len(answer)
        assert tokens.completion_mask[row][len(completion) :].sum() == 0
        assert episode.sampled_tokens == len(call) + len(answer) and episode.inserted_tokens == len(inserted)
        # The whole sequence reads as the chat template renders the conversation.
        rendered = tokenizer.apply_chat_template(
            episode.messages, tools=[tool_from_function(multiply, "m").schema], tokenize=False
        )
        assert full_text(qwen_policy, rollout, row) == rendered.removesuffix("\n")
    assert [m["role"] for m in rollout.episodes[0].messages] == ["user", "assistant", "tool", "assistant"]
    assert rollout.episodes[0].messages[1]["tool_calls"][0]["function"] == {
        "name": "multiply",
        "arguments": {"a": 12, "b": 34},
    }


def test_training_log_probs_equal_the_samplers(qwen_policy):
    """The trainer scores each sampled token with the tool results in its context, as the sampler saw it."""
    script_sampler(qwen_policy, multiply_script)
    rollout = Agent([multiply]).rollout(qwen_policy, BATCH, "prompt", 2, SAMPLING)
    logprobs, _ = qwen_policy.logprobs_and_entropy(rollout.tokens, temperature=1.0, with_entropy=False)
    sampled = rollout.tokens.completion_mask.bool()
    torch.testing.assert_close(logprobs[sampled], rollout.sampling_logprobs[sampled], atol=1e-5, rtol=0)
    # Without the tool results in the attention (the single-turn mask), they would differ.
    blind = replace(rollout.tokens, completion_attention_mask=None)
    blind_logprobs, _ = qwen_policy.logprobs_and_entropy(blind, temperature=1.0, with_entropy=False)
    assert (blind_logprobs[sampled] - rollout.sampling_logprobs[sampled]).abs().max() > 1e-3


def test_tool_errors_reach_the_model_and_are_counted(qwen_policy):
    answers = iter(
        [
            '<tool_call>{"name": "multiply", "arguments": {"a": 1}}</tool_call>',  # bad arguments
            '<tool_call>{"name": "power", "arguments": {}}</tool_call>',  # unknown tool
            "<tool_call>{oops}</tool_call>",  # malformed
            tool_call("multiply", a=2, b=3),
            "6",
        ]
    )
    script_sampler(qwen_policy, lambda context: next(answers))
    rollout = Agent([multiply], max_turns=5).rollout(qwen_policy, {"prompt": ["What is 2 * 3?"]}, "prompt", 1, SAMPLING)
    episode = rollout.episodes[0]
    assert episode.tool_errors == {"bad_arguments": 1, "unknown_tool": 1, "malformed": 1}
    assert episode.turns == 5 and episode.tool_calls == 4 and episode.ended_by == "answer"
    results = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert results[0].startswith("error: multiply: missing a required argument")
    assert results[1] == "error: unknown tool 'power'" and results[2].startswith("error: malformed tool call")
    assert results[3] == "6" and rollout.completions == ["6"]
    assert "error: unknown tool 'power'" in full_text(qwen_policy, rollout, 0)  # the model read it


def test_each_limit_ends_the_episode_and_says_so(qwen_policy):
    always_call = lambda context: tool_call("multiply", a=1, b=1)  # noqa: E731
    script_sampler(qwen_policy, always_call)
    turns_out = Agent([multiply], max_turns=3).rollout(qwen_policy, {"prompt": ["go"]}, "prompt", 1, SAMPLING)
    assert turns_out.episodes[0].ended_by == "max_turns" and turns_out.episodes[0].turns == 3
    assert not turns_out.truncated[0]

    script_sampler(qwen_policy, lambda context: tool_call("multiply", a=1, b=1) * 3)
    long_turns = replace(SAMPLING, max_new_tokens=256)
    calls_out = Agent([multiply], max_tool_calls=2).rollout(qwen_policy, {"prompt": ["go"]}, "prompt", 1, long_turns)
    episode = calls_out.episodes[0]
    assert episode.ended_by == "max_tool_calls" and episode.tool_calls == 3
    assert [m["role"] for m in episode.messages].count("tool") == 2  # the third was not run

    script_sampler(qwen_policy, lambda context: "x" * 50)
    cut = Agent([multiply], max_tokens_per_turn=10).rollout(qwen_policy, {"prompt": ["go"]}, "prompt", 1, SAMPLING)
    assert cut.episodes[0].ended_by == "max_tokens_per_turn" and bool(cut.truncated[0])
    assert int(cut.tokens.completion_mask.sum()) == 10

    script_sampler(qwen_policy, multiply_script)
    budget = Agent([multiply], max_total_tokens=70).rollout(
        qwen_policy, {"prompt": ["What is 2 * 3?"]}, "prompt", 1, SAMPLING
    )
    episode = budget.episodes[0]
    assert episode.ended_by == "max_total_tokens"
    assert budget.tokens.completion_present.sum() <= 70 and episode.inserted_tokens == 0


def test_an_environment_episode(qwen_policy):
    def add_until_done(context: str) -> str:
        return tool_call("add", amount=2)

    script_sampler(qwen_policy, add_until_done)
    agent = Agent(environment=Counter, max_turns=6)
    rollout = agent.rollout(qwen_policy, {"prompt": ["Count.", "Count."], "target": [4, 5]}, "prompt", 2, SAMPLING)
    episodes = rollout.episodes
    assert [e.ended_by for e in episodes] == ["environment"] * 4
    assert [e.turns for e in episodes] == [2, 2, 3, 3]
    environments = [e.environment for e in episodes]
    assert len({id(env) for env in environments}) == 4  # one instance per episode
    assert environments[2].resets == [{"prompt": "Count.", "target": 5}]
    assert episodes[0].messages[0]["content"] == "Count. Reach 4."  # reset's observation, appended
    rewards = agent.reward_functions()["Counter"](environments=environments)
    assert rewards == [1.0, 1.0, 0.0, 0.0]  # 2+2 reaches 4; 2+2+2 passes 5


def test_llama3_family_episode():
    tokenizer = chat_tokenizer(LLAMA3_TEMPLATE, eos="<|eot_id|>")
    policy = tiny_policy(tokenizer)

    def script(context: str) -> str:
        if "ipython" in context:
            return "The product is " + context.rsplit("<|end_header_id|>\n\n", 2)[1].split("<|eot_id|>")[0]
        return '{"name": "multiply", "parameters": {"a": 7, "b": 8}}'

    script_sampler(policy, script)
    rollout = Agent([multiply]).rollout(policy, {"prompt": ["What is 7 * 8?"]}, "prompt", 1, SAMPLING)
    episode = rollout.episodes[0]
    assert episode.ended_by == "answer" and rollout.completions == ["The product is 56"]
    text = full_text(policy, rollout, 0)
    assert (
        '{"name": "multiply", "parameters": {"a": 7, "b": 8}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n56<|eot_id|>" in text
    )


def test_chat_prompts_and_the_system_prompt(qwen_policy):
    script_sampler(qwen_policy, multiply_script)
    messages = [{"role": "user", "content": "What is 3 * 3?"}]
    rollout = Agent([multiply], system_prompt="Use tools.").rollout(
        qwen_policy, {"prompt": [messages]}, "prompt", 1, SAMPLING
    )
    assert rollout.completions == [[{"role": "assistant", "content": "9"}]]  # TRL's conversational form
    assert full_text(qwen_policy, rollout, 0).startswith("<|im_start|>system\nUse tools.\n\n# Tools")
