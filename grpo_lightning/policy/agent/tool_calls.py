"""Tool calls in the formats chat templates teach: read them from the text of an assistant turn.

A parser takes the text the policy sampled in one turn (special tokens kept, the end-of-turn
token removed) and returns a :class:`ParsedTurn`: the calls it asked for, the text around them,
and each call it tried but wrote wrongly (the episode shows the model an error for those; they
never stop the run). One parser per family, in a registry; ``agent.tool_call_format=auto`` picks
it from the chat template (:func:`detect_tool_call_format`).

* ``qwen`` (Qwen2.5, Qwen3, Hermes, many others): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  any number per turn.
* ``llama3`` (Llama 3.1-3.3 JSON tool calling): the whole turn is ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>``; a JSON list of such objects for several calls.
* ``mistral``: ``[TOOL_CALLS]`` then a JSON list of ``{"name": ..., "arguments": {...}}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from grpo_lightning.algo.registry import Registry
from grpo_lightning.config import ConfigError


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedTurn:
    """One assistant turn: its text without the calls, the calls, and the calls written wrongly."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # why each could not be read

    @property
    def wants_tools(self) -> bool:
        return bool(self.calls or self.malformed)


ToolCallParser = Callable[[str], ParsedTurn]
TOOL_CALL_FORMATS: Registry[ToolCallParser] = Registry("agent.tool_call_format")


def _call_from_json(payload: Any, arguments_key: str) -> ToolCall:
    """A ToolCall from a decoded JSON object; ValueError says what is wrong with it."""
    if not isinstance(payload, dict):
        raise ValueError(f"a tool call must be a JSON object, got {type(payload).__name__}")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError('a tool call needs a "name" string')
    arguments = payload.get(arguments_key, {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ValueError(f'"{arguments_key}" is a string that is not JSON ({error.msg})') from None
    if not isinstance(arguments, dict):
        raise ValueError(f'"{arguments_key}" must be a JSON object, got {type(arguments).__name__}')
    return ToolCall(name, arguments)


def _read_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at character {error.pos}): {text.strip()[:80]!r}") from None


_QWEN_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@TOOL_CALL_FORMATS.register("qwen")
def parse_qwen(text: str) -> ParsedTurn:
    calls, malformed = [], []
    for body in _QWEN_CALL.findall(text):
        try:
            calls.append(_call_from_json(_read_json(body), "arguments"))
        except ValueError as error:
            malformed.append(str(error))
    rest = _QWEN_CALL.sub("", text)
    if "<tool_call>" in rest:  # opened, never closed (or closed before it opened)
        malformed.append("<tool_call> without its closing </tool_call>")
        rest = rest.split("<tool_call>", 1)[0]
    return ParsedTurn(rest.strip(), calls, malformed)


def _parse_json_calls(payload: Any, arguments_key: str, accepted_keys: tuple[str, ...]) -> ParsedTurn:
    calls, malformed = [], []
    for item in payload if isinstance(payload, list) else [payload]:
        try:
            if isinstance(item, dict):
                key = next((k for k in accepted_keys if k in item), arguments_key)
                calls.append(_call_from_json(item, key))
            else:
                calls.append(_call_from_json(item, arguments_key))
        except ValueError as error:
            malformed.append(str(error))
    return ParsedTurn("", calls, malformed)


@TOOL_CALL_FORMATS.register("llama3")
def parse_llama3(text: str) -> ParsedTurn:
    body = text.strip()
    tagged = body.startswith("<|python_tag|>")
    body = body.removeprefix("<|python_tag|>").strip()
    if not (tagged or body.startswith("{") or body.startswith("[{")):
        return ParsedTurn(text.strip())  # an answer in words
    try:
        payload = _read_json(body)
    except ValueError as error:
        return ParsedTurn("", malformed=[str(error)])
    if isinstance(payload, dict) and "name" not in payload and not tagged:
        return ParsedTurn(text.strip())  # a JSON answer, not a call
    return _parse_json_calls(payload, "parameters", ("parameters", "arguments"))


@TOOL_CALL_FORMATS.register("mistral")
def parse_mistral(text: str) -> ParsedTurn:
    if "[TOOL_CALLS]" not in text:
        return ParsedTurn(text.strip())
    content, body = text.split("[TOOL_CALLS]", 1)
    try:
        payload = _read_json(body)
    except ValueError as error:
        return ParsedTurn(content.strip(), malformed=[str(error)])
    parsed = _parse_json_calls(payload, "arguments", ("arguments",))
    return ParsedTurn(content.strip(), parsed.calls, parsed.malformed)


_TEMPLATE_MARKERS = (
    ("<tool_call>", "qwen"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3"),
    ("ipython", "llama3"),
)


def detect_tool_call_format(chat_template: str) -> str:
    """The parser for the format ``chat_template`` writes tool calls in (by the markers it renders)."""
    for marker, name in _TEMPLATE_MARKERS:
        if marker in chat_template:
            return name
    raise ConfigError(
        "agent.tool_call_format=auto cannot tell from the tokenizer's chat template how the model writes tool "
        f"calls (none of {', '.join(marker for marker, _ in _TEMPLATE_MARKERS)} appears in it); set "
        f"agent.tool_call_format to one of {sorted(TOOL_CALL_FORMATS)}"
    )
