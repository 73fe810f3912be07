"""Multi-turn agent episodes: the policy calls tools or acts in an environment over several turns.

Per completion, a conversation: prompt -> assistant turn -> tool results -> assistant turn -> ...
until the model answers without a tool call, the environment says it is done, or a limit is
reached (agent.max_turns, max_tool_calls, max_tokens_per_turn, max_total_tokens). The turns of a
whole batch of episodes (G per prompt) are sampled together, one batched call per turn, and their
tool calls run together (tools.ToolRunner).

Token in, token out: the training sequence is the prompt's ids followed by exactly the ids the
policy sampled, with the ids of what came between its turns (tool results, observations, the chat
template's glue) inserted as the template renders them, never re-tokenized text. Those inserted ids
are TRL's way (GRPOTrainer._get_tool_suffix_ids, TRL 1.16): the template's rendering of a dummy
assistant tool call followed by the tool messages and the next generation prompt, minus its
rendering up to the assistant's end-of-turn token. ``completion_mask`` is 1 exactly on the sampled
tokens; ``completion_attention_mask`` on every token of the sequence.

Run it with ``agent.tools=[module.function]`` or ``agent.environment=module.Class`` (config/schema.py,
AgentConfig), or from Python: ``GRPOModule(policy, reward, agent=Agent(tools=[multiply]))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from grpo_lightning.config import AgentConfig, ConfigError, import_object
from grpo_lightning.policy.agent.environments import EnvironmentSpec, episode_done
from grpo_lightning.policy.agent.tool_calls import (
    TOOL_CALL_FORMATS,
    ParsedTurn,
    ToolCall,
    detect_tool_call_format,
)
from grpo_lightning.policy.agent.tools import Tool, ToolResult, ToolRunner, refuse_name_clashes, tool_from_function
from grpo_lightning.policy.base import Policy, SamplingParams, completion_mask_from_eos, grouped_rollout
from grpo_lightning.types import Episode, Rollout, TokenBatch

ENDINGS = ("answer", "environment", "max_turns", "max_tool_calls", "max_tokens_per_turn", "max_total_tokens")
"""Why an episode stopped (each logged as agent/ended_by/<why>); all but the first two are limits."""


@dataclass
class _Conversation:
    """One episode in progress: its token sequence and what each token is."""

    episode: Episode
    tools: dict[str, Tool]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)  # per completion token: the policy drew it
    sampler_logprobs: list[float] = field(default_factory=list)  # per completion token; 0 where inserted
    cut: bool = False  # its last turn ended at a token limit, not at end-of-turn
    finished: bool = False

    def finish(self, why: str) -> None:
        self.episode.ended_by, self.finished = why, True

    def add(self, ids: list[int], sampled: bool, logprobs: Optional[list[float]] = None) -> None:
        self.completion_ids += ids
        self.sampled += [sampled] * len(ids)
        self.sampler_logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        if sampled:
            self.episode.sampled_tokens += len(ids)
        else:
            self.episode.inserted_tokens += len(ids)


class Agent:
    """Tools and/or an environment, the episode limits, and the multi-turn rollout over them."""

    def __init__(
        self,
        tools: Sequence[Callable[..., Any]] = (),
        environment: Optional[Callable[[], Any]] = None,
        *,
        max_turns: int = 4,
        max_tool_calls: int = 8,
        max_tokens_per_turn: Optional[int] = None,
        max_total_tokens: Optional[int] = None,
        tool_timeout_s: float = 10.0,
        tool_workers: int = 8,
        tool_call_format: str = "auto",
        system_prompt: Optional[str] = None,
        tool_origins: Optional[Sequence[str]] = None,
        environment_origin: str = "agent.environment",
        environment_reward_weight: float = 1.0,
    ):
        limits = AgentConfig(
            environment_reward_weight=environment_reward_weight,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            max_tokens_per_turn=max_tokens_per_turn,
            max_total_tokens=max_total_tokens,
            tool_timeout_s=tool_timeout_s,
            tool_workers=tool_workers,
            tool_call_format=tool_call_format,
        )
        limits.validate()
        self.limits = limits
        origins = list(tool_origins) if tool_origins is not None else [f"agent.tools[{i}]" for i in range(len(tools))]
        self.tools = [tool_from_function(fn, origin) for fn, origin in zip(tools, origins)]
        self.environment = (
            EnvironmentSpec.from_factory(environment, environment_origin) if environment is not None else None
        )
        self.environment_origin = environment_origin
        if not self.tools and self.environment is None:
            raise ConfigError("an agent needs tools (agent.tools) or an environment (agent.environment)")
        environment_tools = self.environment.method_names if self.environment is not None else []
        refuse_name_clashes([tool.name for tool in self.tools] + environment_tools)
        self.system_prompt = system_prompt
        self.runner = ToolRunner(tool_workers, tool_timeout_s)
        self._parse: Optional[Callable[[str], ParsedTurn]] = None

    @classmethod
    def from_config(cls, cfg: AgentConfig, system_prompt: Optional[str] = None) -> Optional["Agent"]:
        """The agent of the ``agent`` config group, or None where it sets neither tools nor environment."""
        if not cfg.enabled:
            return None
        functions = [import_object(path, f"agent.tools[{i}]") for i, path in enumerate(cfg.tools)]
        environment = import_object(cfg.environment, "agent.environment") if cfg.environment is not None else None
        return cls(
            functions,
            environment,
            max_turns=cfg.max_turns,
            max_tool_calls=cfg.max_tool_calls,
            max_tokens_per_turn=cfg.max_tokens_per_turn,
            max_total_tokens=cfg.max_total_tokens,
            tool_timeout_s=cfg.tool_timeout_s,
            tool_workers=cfg.tool_workers,
            tool_call_format=cfg.tool_call_format,
            system_prompt=system_prompt,
            tool_origins=[f"agent.tools[{i}]={path}" for i, path in enumerate(cfg.tools)],
            environment_origin=f"agent.environment={cfg.environment}",
            environment_reward_weight=cfg.environment_reward_weight,
        )

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's schema, as the chat template receives them."""
        environment = self.environment.schemas if self.environment is not None else []
        return [tool.schema for tool in self.tools] + environment

    def max_sampled_tokens(self, max_new_tokens: int) -> int:
        """The most tokens an episode can sample (and carry a loss on); ``max_new_tokens`` is the
        per-turn limit where agent.max_tokens_per_turn is unset."""
        per_turn = self.limits.max_tokens_per_turn or max_new_tokens
        most = self.limits.max_turns * per_turn
        return most if self.limits.max_total_tokens is None else min(most, self.limits.max_total_tokens)

    def reward_functions(self) -> dict[str, Callable[..., list[Optional[float]]]]:
        """The environment's own reward (``get_reward``), named after its class; none otherwise. Its
        weight in the total is ``self.limits.environment_reward_weight``."""
        if self.environment is None or not self.environment.owns_reward:
            return {}
        return {self.environment.name: self.environment.reward_function()}

    def check_policy(self, policy: Any) -> None:
        """Refuse, at start, a policy whose chat template cannot carry tools; pick the call parser."""
        tokenizer = getattr(policy, "tokenizer", None)
        if not isinstance(policy, Policy) or tokenizer is None:
            raise ConfigError(
                "agent.tools / agent.environment need a language-model policy with a tokenizer "
                f"(model.name_or_path); {type(policy).__name__} has none"
            )
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ConfigError(
                "agent.tools / agent.environment need the tokenizer's chat template (it renders the tools and the "
                "tool results), and this tokenizer has none; use an instruct model whose template supports tools"
            )
        probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "probe"}], tools=self.schemas, add_generation_prompt=True, tokenize=False
        )
        first = self.schemas[0]["function"]["name"]
        if first not in probe:
            raise ConfigError(
                f"the tokenizer's chat template does not render tools: the tool {first!r} does not appear in a "
                "prompt rendered with tools=[...], so the model could not know it; use a model whose chat "
                "template supports tools (e.g. Qwen2.5/Qwen3/Llama 3.1+ instruct)"
            )
        name = self.limits.tool_call_format
        self._parse = TOOL_CALL_FORMATS.lookup(detect_tool_call_format(template) if name == "auto" else name)
        try:
            self._inserted_ids(tokenizer, [{"role": "tool", "name": first, "content": "probe"}], policy.eos_token_ids)
        except Exception as error:
            raise ConfigError(
                f"the tokenizer's chat template cannot render a tool call and its result ({type(error).__name__}: "
                f"{error}); use a model whose chat template supports tools"
            ) from None

    def close(self) -> None:
        self.runner.close()

    # -- the rollout -----------------------------------------------------------------------

    def rollout(
        self, policy: Policy, batch: dict[str, list[Any]], prompt_key: str, group_size: int, sampling: SamplingParams
    ) -> Rollout:
        """``group_size`` episodes per prompt of ``batch`` (rows i*G .. i*G+G-1 belong to prompt i)."""
        if self._parse is None:
            self.check_policy(policy)
        tokenizer, eos_ids = policy.tokenizer, policy.eos_token_ids
        prompts = batch[prompt_key]
        columns = {key: values for key, values in batch.items() if key != prompt_key}
        conversations = [
            self._start(tokenizer, {prompt_key: prompts[i], **{k: v[i] for k, v in columns.items()}}, prompt_key)
            for i in range(len(prompts))
            for _ in range(group_size)
        ]
        per_turn = self.limits.max_tokens_per_turn or sampling.max_new_tokens
        for turn in range(self.limits.max_turns):
            active = [c for c in conversations if not c.finished]
            budgets = [min(per_turn, self._tokens_left(c)) for c in active]
            for conversation, budget in zip(active, budgets):
                if budget < 1:
                    conversation.finish("max_total_tokens")
            active, budgets = [c for c in active if not c.finished], [b for b in budgets if b >= 1]
            if not active:
                break
            wanting = self._sample_turn(policy, active, budgets, per_turn, sampling, eos_ids)
            self._act(tokenizer, wanting, eos_ids, last_turn=turn == self.limits.max_turns - 1)
        return self._as_rollout(policy, conversations, prompts, columns, group_size, sampling)

    def _start(self, tokenizer: Any, row: dict[str, Any], prompt_key: str) -> _Conversation:
        prompt = row[prompt_key]
        environment, observation, environment_tools = None, None, []
        if self.environment is not None:
            environment, observation, environment_tools = self.environment.start(row, self.environment_origin)
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            messages = [dict(message) for message in prompt]
        else:
            raise ConfigError(
                f"a prompt (column {prompt_key!r}) is {type(prompt).__name__}; an agent's prompts are text or "
                "lists of chat messages"
            )
        if observation:  # TRL appends reset()'s observation to the last user message
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
        if self.system_prompt is not None and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = tokenizer.apply_chat_template(messages, tools=self.schemas, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tools = {tool.name: tool for tool in [*self.tools, *environment_tools]}
        return _Conversation(Episode(messages, environment=environment), tools, ids)

    def _tokens_left(self, conversation: _Conversation) -> int:
        """Tokens the episode may still add under agent.max_total_tokens."""
        limit = self.limits.max_total_tokens
        return limit - len(conversation.completion_ids) if limit is not None else 1 << 30

    def _sample_turn(
        self,
        policy: Policy,
        active: list[_Conversation],
        budgets: list[int],
        per_turn: int,
        sampling: SamplingParams,
        eos_ids: list[int],
    ) -> list[tuple[_Conversation, ParsedTurn]]:
        """One assistant turn of every active episode; those that asked for tools, with their calls."""
        device = next(policy.parameters()).device
        contexts = [c.prompt_ids + c.completion_ids for c in active]
        ids, mask = left_padded(contexts, policy.tokenizer.pad_token_id, device)
        new_ids, logprobs = policy.sample_with_logprobs(ids, mask, replace(sampling, max_new_tokens=max(budgets)))
        turn_mask, _ = completion_mask_from_eos(new_ids, eos_ids)
        wanting = []
        for row, (conversation, budget) in enumerate(zip(active, budgets)):
            length = min(int(turn_mask[row].sum()), budget)
            tokens = new_ids[row, :length].tolist()
            ended = bool(tokens) and tokens[-1] in eos_ids
            row_logprobs = logprobs[row, :length].tolist() if logprobs is not None else None
            conversation.add(tokens, sampled=True, logprobs=row_logprobs)
            conversation.episode.turns += 1
            text = policy.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=False)
            parsed = self._parse(text)
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.calls:
                message["tool_calls"] = [
                    {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                    for call in parsed.calls
                ]
            conversation.episode.messages.append(message)
            if not ended:
                conversation.cut = True
                conversation.finish("max_tokens_per_turn" if budget == per_turn else "max_total_tokens")
            elif not parsed.wants_tools:
                conversation.finish("answer")
            else:
                wanting.append((conversation, parsed))
        return wanting

    def _act(
        self, tokenizer: Any, wanting: list[tuple[_Conversation, ParsedTurn]], eos_ids: list[int], last_turn: bool
    ) -> None:
        """Run the turn's tool calls (all episodes together), then insert their results, or end.

        Calls past agent.max_tool_calls are not run (well-formed ones first, then the malformed)."""
        requests: list[tuple[Optional[Tool], ToolCall]] = []
        plans = []
        for conversation, parsed in wanting:
            episode = conversation.episode
            allowed = max(0, self.limits.max_tool_calls - episode.tool_calls)
            asked = len(parsed.calls) + len(parsed.malformed)
            episode.tool_calls += asked
            run = parsed.calls[:allowed]
            malformed = parsed.malformed[: allowed - len(run)]
            plans.append((conversation, run, malformed, len(requests), asked > allowed))
            requests += [(conversation.tools.get(call.name), call) for call in run]
        results = self.runner.run(requests)
        for conversation, run, malformed, first, over_limit in plans:
            episode = conversation.episode
            named = [(call.name, result) for call, result in zip(run, results[first : first + len(run)])]
            named += [("error", ToolResult(f"error: malformed tool call: {why}", "malformed")) for why in malformed]
            tool_messages = []
            for name, result in named:
                if result.error_kind is not None:
                    episode.tool_errors[result.error_kind] = episode.tool_errors.get(result.error_kind, 0) + 1
                tool_messages.append({"role": "tool", "name": name, "content": result.content})
            episode.messages += tool_messages
            if over_limit:
                conversation.finish("max_tool_calls")
            elif episode_done(episode.environment):
                conversation.finish("environment")
            elif last_turn:
                conversation.finish("max_turns")
            elif tool_messages:
                inserted = self._inserted_ids(tokenizer, tool_messages, eos_ids)
                if len(inserted) >= self._tokens_left(conversation):  # no room left for a turn after them
                    conversation.finish("max_total_tokens")
                else:
                    conversation.add(inserted, sampled=False)

    @staticmethod
    def _inserted_ids(tokenizer: Any, tool_messages: list[dict[str, Any]], eos_ids: list[int]) -> list[int]:
        """The ids between an assistant turn's end-of-turn token and the next turn (module docstring)."""
        dummy_call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [dummy_call]}]
        options = dict(tokenize=True, return_dict=False)
        prefix = list(tokenizer.apply_chat_template(dummy, add_generation_prompt=False, **options))
        full = list(tokenizer.apply_chat_template(dummy + tool_messages, add_generation_prompt=True, **options))
        ends = [i for i, token in enumerate(prefix) if token in eos_ids]
        if ends:  # templates write glue (e.g. a newline) after the end-of-turn token; it belongs to the insert
            prefix = prefix[: ends[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise ValueError("the chat template renders an assistant turn differently once tool results follow it")
        return full[len(prefix) :]

    def _as_rollout(
        self,
        policy: Policy,
        conversations: list[_Conversation],
        prompts: list[Any],
        columns: dict[str, list[Any]],
        group_size: int,
        sampling: SamplingParams,
    ) -> Rollout:
        device = next(policy.parameters()).device
        pad = policy.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_padded([c.prompt_ids for c in conversations], pad, device)  # [B, P]
        width = max(len(c.completion_ids) for c in conversations)

        def right_padded(values: list[list[Any]], fill: Any, dtype: torch.dtype) -> Tensor:
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=dtype, device=device)

        completion_ids = right_padded([c.completion_ids for c in conversations], pad, torch.long)  # [B, T]
        sampled = right_padded([[int(s) for s in c.sampled] for c in conversations], 0, torch.long)  # [B, T]
        present = right_padded([[1] * len(c.completion_ids) for c in conversations], 0, torch.long)  # [B, T]
        logprobs = None
        if sampling.record_logprobs:
            logprobs = right_padded([c.sampler_logprobs for c in conversations], 0.0, torch.float32)  # [B, T]
        tokens = TokenBatch(prompt_ids, prompt_mask, completion_ids, sampled, completion_attention_mask=present)
        episodes = [c.episode for c in conversations]
        conversational = any(not isinstance(p, str) for p in prompts)
        finals = [e.final_answer for e in episodes]
        completions = [[{"role": "assistant", "content": f}] for f in finals] if conversational else finals
        truncated = torch.tensor([c.cut for c in conversations], dtype=torch.bool, device=device)
        rollout = grouped_rollout(tokens, prompts, columns, group_size, completions, truncated, logprobs)
        return replace(rollout, episodes=episodes)


def left_padded(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Ids [B, L] and mask [B, L] of sequences padded on the left to the longest."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long, device=device)
    return ids, mask
