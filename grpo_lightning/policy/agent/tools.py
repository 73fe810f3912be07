"""Tools: plain Python functions with type hints and a Google-style docstring (TRL's contract).

:func:`tool_from_function` reads a function's schema with transformers' ``get_json_schema`` (the
JSON the chat template renders through its ``tools=`` argument, so the model sees it) and refuses,
at start, a function it cannot describe. :class:`ToolRunner` runs the calls of a whole batch of
episodes concurrently on a thread pool, each under a timeout; whatever goes wrong in a call comes
back as an error text for the model to read, with its kind counted (:data:`TOOL_ERROR_KINDS`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from grpo_lightning.config import ConfigError
from grpo_lightning.policy.agent.tool_calls import ToolCall

log = logging.getLogger(__name__)

TOOL_ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "exception", "timeout")
"""Why a tool call gave the model an error instead of a result (each logged as agent/tool_errors/<kind>)."""

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., Any]
    schema: dict[str, Any]  # {"type": "function", "function": {"name", "description", "parameters"}}

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def argument_error(self, arguments: dict[str, Any]) -> Optional[str]:
        """Why ``arguments`` do not fit the tool's parameters (names, then JSON types), or None."""
        try:
            inspect.signature(self.function).bind(**arguments)
        except TypeError as error:
            return f"{self.name}: {error}"
        properties = self.schema["function"]["parameters"].get("properties", {})
        for name, value in arguments.items():
            expected = _JSON_TYPES.get(properties.get(name, {}).get("type", ""))
            wrong_bool = isinstance(value, bool) and bool not in (expected or ())
            if expected is not None and (not isinstance(value, expected) or wrong_bool):
                wanted = properties[name]["type"]
                return f"{self.name}: argument {name!r} must be {wanted}, got {type(value).__name__} {value!r}"
        return None


def tool_from_function(function: Callable[..., Any], origin: str) -> Tool:
    """The tool of ``function``; ``origin`` names it in errors (its config path or class)."""
    from transformers.utils import get_json_schema

    if not callable(function):
        raise ConfigError(f"{origin} is {type(function).__name__}, not a function; a tool is a Python function")
    name = getattr(function, "__name__", repr(function))
    try:
        schema = get_json_schema(function)
    except Exception as error:  # transformers' DocstringParsingException / TypeHintParsingException
        raise ConfigError(
            f"tool {name!r} ({origin}) cannot be described to the model: {error}. A tool needs a type hint on "
            "every argument and a Google-style docstring with an Args: section describing each one, e.g.\n"
            "    def multiply(a: int, b: int) -> int:\n"
            '        """Multiply two integers.\n\n        Args:\n            a: The first factor.\n'
            '            b: The second factor.\n        """'
        ) from None
    return Tool(name, function, schema)


def refuse_name_clashes(names: list[str]) -> None:
    """Two tools of one name: the model calls tools by name and could not tell them apart."""
    clash = next((name for name in names if names.count(name) > 1), None)
    if clash is not None:
        raise ConfigError(
            f"two tools are named {clash!r} (agent.tools and the environment's methods); the model calls tools "
            "by name, so rename one (a tool's name is its function's or method's name)"
        )


@dataclass
class ToolResult:
    content: str  # what the model reads
    error_kind: Optional[str] = None  # one of TOOL_ERROR_KINDS, None for a result


class ToolRunner:
    """Runs tool calls on ``workers`` threads, each call under ``timeout_s`` (from when it starts).

    A call that runs past its timeout is abandoned, not stopped (Python cannot stop a thread); once
    as many calls hang as there are workers, the pool is replaced so that later calls still run.
    """

    def __init__(self, workers: int, timeout_s: float):
        self.workers, self.timeout_s = workers, timeout_s
        self._pool: Optional[ThreadPoolExecutor] = None
        self._hung: list[Future] = []

    def run(self, calls: list[tuple[Optional[Tool], ToolCall]]) -> list[ToolResult]:
        """One result per call, in order; a None tool is a call of an unknown name."""
        results: list[Optional[ToolResult]] = [None] * len(calls)
        pending: dict[int, tuple[Future, dict[str, float]]] = {}
        for index, (tool, call) in enumerate(calls):
            if tool is None:
                results[index] = ToolResult(f"error: unknown tool {call.name!r}", "unknown_tool")
                continue
            problem = tool.argument_error(call.arguments)
            if problem is not None:
                results[index] = ToolResult(f"error: {problem}", "bad_arguments")
                continue
            started: dict[str, float] = {}
            pending[index] = (self._executor().submit(_invoke, tool, call.arguments, started), started)
        while pending:
            for index, (future, started) in list(pending.items()):
                if future.done():
                    results[index] = _outcome(future, calls[index][1].name)
                    del pending[index]
                elif "at" in started and time.monotonic() - started["at"] > self.timeout_s:
                    results[index] = ToolResult(
                        f"error: {calls[index][1].name} did not return within {self.timeout_s} s", "timeout"
                    )
                    self._hung.append(future)
                    del pending[index]
            if pending:
                time.sleep(0.001)
        self._replace_pool_if_exhausted()
        return [result for result in results if result is not None]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="grpo-tool")
        return self._pool

    def _replace_pool_if_exhausted(self) -> None:
        self._hung = [future for future in self._hung if not future.done()]
        if self._pool is not None and len(self._hung) >= self.workers:
            log.warning(
                "%d tool calls still run past agent.tool_timeout_s=%s; starting a new pool of %d threads "
                "(the old threads finish on their own)",
                len(self._hung),
                self.timeout_s,
                self.workers,
            )
            self._pool.shutdown(wait=False)
            self._pool, self._hung = None, []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _invoke(tool: Tool, arguments: dict[str, Any], started: dict[str, float]) -> Any:
    started["at"] = time.monotonic()
    if tool.is_async:  # a worker thread runs no event loop of its own
        return asyncio.run(tool.function(**arguments))
    return tool.function(**arguments)


def _outcome(future: Future, name: str) -> ToolResult:
    error = future.exception()
    if error is not None:
        return ToolResult(f"error: {name} raised {type(error).__name__}: {error}", "exception")
    return ToolResult(_as_text(future.result()))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
