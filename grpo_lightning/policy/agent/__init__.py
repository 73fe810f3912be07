"""Agents: multi-turn episodes with tools and environments (episodes.py), tools and their calls
(tools.py, tool_calls.py), environments (environments.py)."""

from grpo_lightning.policy.agent.episodes import ENDINGS, Agent
from grpo_lightning.policy.agent.tool_calls import TOOL_CALL_FORMATS, ParsedTurn, ToolCall
from grpo_lightning.policy.agent.tools import TOOL_ERROR_KINDS, Tool, ToolRunner, tool_from_function

__all__ = [
    "ENDINGS",
    "TOOL_CALL_FORMATS",
    "TOOL_ERROR_KINDS",
    "Agent",
    "ParsedTurn",
    "Tool",
    "ToolCall",
    "ToolRunner",
    "tool_from_function",
]
